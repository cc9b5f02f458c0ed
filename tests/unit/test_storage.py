"""ObjectStore against a fake client (fast tier); the integration tier uses the real S3 server."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from lcm_fleet.errors import StorageError, TransientStorageError
from lcm_fleet.storage import classify
from worker.results.storage import result_store
from worker.settings import WorkerSettings


def _settings(**over):
    base = dict(
        model_dir="/m",
        s3_access_key_id="k",
        s3_secret_access_key="s",
        upload_attempts=3,
        storage_retry_budget_s=0,  # attempts here; the budget has its own test
        upload_backoff_base_s=0.001,
        upload_backoff_cap_s=0.002,
    )
    base.update(over)
    return WorkerSettings(**base)


def _client_error(code, status):
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_transient_errors_are_retried_then_stored(fake_s3):
    fake = fake_s3(
        [EndpointConnectionError(endpoint_url="http://x"), _client_error("SlowDown", 503)]
    )
    store = result_store(_settings(), client=fake)
    store.put("k", b"data", "image/png")
    assert fake.objects == {"k": b"data"}


def test_gives_up_after_bounded_attempts(fake_s3):
    fake = fake_s3([_client_error("InternalError", 500)] * 10)
    with pytest.raises(TransientStorageError):
        result_store(_settings(), client=fake).put("k", b"d", "image/png")
    assert len(fake.failures) == 7  # 3 attempts used


def test_permanent_error_is_not_retried(fake_s3):
    fake = fake_s3([_client_error("AccessDenied", 403), _client_error("AccessDenied", 403)])
    with pytest.raises(StorageError) as info:
        result_store(_settings(), client=fake).put("k", b"d", "image/png")
    assert not isinstance(info.value, TransientStorageError)
    assert len(fake.failures) == 1


def test_etag_mismatch_is_transient(fake_s3):
    class BadEtag(fake_s3):
        def put_object(self, **kw):
            return {"ETag": '"0000"'}

    with pytest.raises(TransientStorageError, match="ETag"):
        result_store(_settings(), client=BadEtag()).put("k", b"d", "image/png")


def test_classify():
    assert isinstance(classify(_client_error("NoSuchBucket", 404), "x"), StorageError)
    assert isinstance(classify(_client_error("x", 502), "x"), TransientStorageError)
    assert isinstance(classify(ConnectionResetError(), "x"), TransientStorageError)
