"""The HTTP API's pure pieces: key hashing, webhook URL checks, sizes, error bodies."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lcm_fleet.contract import parse_job
from lcm_fleet.errors import InvalidJob
from producer.http.auth import KeyStore, key_digest, split_key, webhook_secret
from producer.http.errors import ApiError, from_invalid_job, from_validation
from producer.http.schemas import BatchRequest, JobRequest
from producer.http.settings import ApiSettings, parse_size
from producer.http.webhook_urls import check_webhook_url, is_public


def _settings(**over: Any) -> ApiSettings:
    return ApiSettings(**{"api_key_pepper": "pepper", **over})


class FakeRedis:
    """The few hash and set commands KeyStore uses."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}

    def pipeline(self) -> FakeRedis:
        return self

    def execute(self) -> list[Any]:
        return []

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def hsetnx(self, key: str, field: str, value: str) -> bool:
        if field in self.hashes.setdefault(key, {}):
            return False
        self.hashes[key][field] = value
        return True

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def exists(self, key: str) -> bool:
        return key in self.hashes

    def sadd(self, key: str, value: str) -> None:
        self.sets.setdefault(key, set()).add(value)

    def smembers(self, key: str) -> set[str]:
        return self.sets.get(key, set())


def test_the_pepper_is_required() -> None:
    with pytest.raises(ValidationError, match="api_key_pepper"):
        ApiSettings()  # type: ignore[call-arg]


def test_keys_are_stored_as_peppered_digests_and_verify() -> None:
    redis, settings = FakeRedis(), _settings()
    store = KeyStore(redis, settings)
    record, key = store.create("alice", rate_per_minute=5)
    assert split_key(key) == record.key_id and record.rate_per_minute == 5
    stored = redis.hashes[f"lcm-fleet:api:key:{record.key_id}"]
    assert key not in str(stored) and key.split("_", 2)[2] not in str(stored)
    assert (
        stored["digest"]
        == key_digest(settings, key)
        != key_digest(_settings(api_key_pepper="p2"), key)
    )
    assert store.verify(key) == record
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.verify("lcm_nothex_" + "x" * 43) is None and store.verify("") is None
    # The same key checked under another pepper fails: the pepper is part of the digest.
    assert KeyStore(redis, _settings(api_key_pepper="other")).verify(key) is None
    assert store.revoke(record.key_id) and not store.revoke(record.key_id)
    assert store.verify(key) is None and store.list()[0].revoked


def test_webhook_secret_is_derived_per_key() -> None:
    settings = _settings()
    a, b = webhook_secret(settings, "a" * 16), webhook_secret(settings, "b" * 16)
    assert a.startswith(b"whsec_") and a != b and webhook_secret(settings, "a" * 16) == a
    assert webhook_secret(_settings(api_key_pepper="other"), "a" * 16) != a


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/h",
        "http://localhost:8000/h",
        "https://10.1.2.3/h",
        "http://192.168.0.5/h",
        "http://169.254.169.254/latest",
        "http://[::1]/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://0.0.0.0/h",
        "ftp://example.com/h",
        "file:///etc/passwd",
        "http:///nohost",
        "http://user:pw@example.com/h",
        "http://example.com:99999/h",
        "http://unresolvable.invalid/h",
    ],
)
def test_webhook_urls_refused(url: str) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if host == "localhost":
            return ["127.0.0.1"]
        raise OSError("no such host")

    with pytest.raises(ApiError) as caught:
        check_webhook_url(url, resolver=resolver)
    error = caught.value
    assert error.status == 400 and error.param == "webhook_url" and error.value == url
    assert "allowed" in error.message and error.allowed


def test_webhook_urls_accepted() -> None:
    public = lambda host, port: ["93.184.216.34"]  # noqa: E731
    assert check_webhook_url("https://hooks.example.com/x?y=1", resolver=public)
    assert check_webhook_url("http://8.8.8.8:8080/h")
    # A host with one private address among public ones is refused.
    with pytest.raises(ApiError):
        check_webhook_url("https://mixed.example/", resolver=lambda h, p: ["8.8.8.8", "10.0.0.1"])
    # The tests' receivers run on loopback: a setting allows it.
    assert check_webhook_url("http://127.0.0.1:9/h", allow_private=True)
    assert is_public("8.8.8.8") and not is_public("100.64.0.1")


def test_sizes() -> None:
    assert parse_size("512x512") == (512, 512) and parse_size(" 64X128 ") == (64, 128)
    for bad in ("512", "axb", "512x", "x512", "-8x8", "1.5x2"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    assert _settings(served_sizes="64x64, 512x768").served_size_list == ((64, 64), (512, 768))
    with pytest.raises(ValidationError):
        _settings(served_sizes="64x64,big")


def test_validation_errors_name_field_value_and_allowed() -> None:
    with pytest.raises(ValidationError) as caught:
        JobRequest.model_validate({"prompt": "x", "steps": 12})
    error = from_validation([{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()])
    assert (error.status, error.param, error.value) == (400, "steps", 12)
    assert error.allowed and "1 to 8" in error.allowed and "'steps'" in error.message

    with pytest.raises(ValidationError) as caught:
        BatchRequest.model_validate({"jobs": [{"prompt": "a"}, {"prompt": "b", "seed": -2}]})
    error = from_validation(list(caught.value.errors()))  # type: ignore[arg-type]
    assert error.param == "jobs[1].seed" and error.value == -2 and "0 to" in (error.allowed or "")

    body = error.body().model_dump()
    assert set(body["error"]) == {"message", "type", "param", "code", "value", "allowed"}
    assert body["error"]["type"] == "invalid_request_error"


def test_contract_rejections_keep_the_contract_message() -> None:
    with pytest.raises(InvalidJob) as caught:
        parse_job({"prompt": "x", "width": 100, "height": 64})
    error = from_invalid_job(caught.value)
    assert error.param == "width" and error.value == 100
    assert str(caught.value) in error.message and "multiple of 8" in error.message


def test_long_values_are_shortened_in_error_bodies() -> None:
    error = ApiError(400, "m", param="prompt", value="x" * 5000)
    assert len(error.body().error.value) == 200


class FakeAsyncRedis:
    """``hgetall`` of a FakeRedis, awaited, counting the lookups."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.lookups = 0

    async def hgetall(self, key: str) -> dict[str, str]:
        self.lookups += 1
        return self.redis.hgetall(key)


def test_verified_keys_are_remembered_for_their_bound_and_revocation_ends_them() -> None:
    import asyncio

    from producer.http.auth import VerifiedKeys

    redis, now = FakeRedis(), [100.0]
    store = KeyStore(redis, _settings())
    record, key = store.create("alice")
    aredis = FakeAsyncRedis(redis)
    keys = VerifiedKeys(aredis, store, ttl_s=2.0, clock=lambda: now[0])

    def verify(value: str) -> Any:
        return asyncio.run(keys.verify(value))

    assert verify(key) == record and verify(key) == record and aredis.lookups == 1
    # A bad key is never remembered: each is looked up (and a malformed one never is).
    bad = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert verify(bad) is None and verify(bad) is None and aredis.lookups == 3
    assert verify("lcm_nothex_" + "x" * 43) is None and aredis.lookups == 3
    store.revoke(record.key_id)
    now[0] += 1.9  # still within the bound: the remembered answer
    assert verify(key) == record and aredis.lookups == 3
    now[0] += 0.2  # past it: looked up again, revoked
    assert verify(key) is None and aredis.lookups == 4
    assert verify(key) is None and aredis.lookups == 5
    # ttl 0: every check looks the key up.
    other, other_key = store.create("bob")
    uncached = VerifiedKeys(aredis, store, ttl_s=0.0, clock=lambda: now[0])
    assert asyncio.run(uncached.verify(other_key)) == other
    assert asyncio.run(uncached.verify(other_key)) == other and aredis.lookups == 7


def test_task_message_is_what_send_task_pushes() -> None:
    """The message the submission script pushes is byte for byte the envelope that Celery's
    send_task gives kombu's virtual transport, but for its delivery tag."""
    import json

    from celery import Celery

    from lcm_fleet.contract import TASK_RENDER, WIRE_CONFIG
    from producer.queue import task_message

    app = Celery("test", broker="memory://", backend="cache+memory://")
    app.conf.update(WIRE_CONFIG)
    job = parse_job({"prompt": "a lighthouse, é", "seed": 3, "job_id": "j-1"})
    args, headers = [job.model_dump(mode="json")], {"lcm_submitted_at": 12.5}
    app.send_task(TASK_RENDER, args=args, task_id=job.job_id, queue="q1", headers=headers)
    with app.connection_for_write() as conn:
        sent = conn.default_channel._get("q1")
    ours = json.loads(task_message(app, TASK_RENDER, args, job.job_id, "q1", headers).payload)
    assert sent["properties"].pop("delivery_tag") != ours["properties"].pop("delivery_tag")
    assert ours == json.loads(json.dumps(sent))
    assert ours["headers"]["task"] == TASK_RENDER and ours["headers"]["id"] == "j-1"


def test_connections_get_tcp_nodelay_even_from_a_protocol_0_socket() -> None:
    """uvicorn's multi-process socket is ``socket.socket(AF_INET)`` (protocol 0), on whose
    connections asyncio sets no TCP_NODELAY; lcm-api's protocol sets it on each."""
    import socket

    from producer.http.server import set_nodelay

    with socket.socket(socket.AF_INET) as listener:
        assert listener.proto == 0
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                set_nodelay(accepted)
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()


def test_a_job_s_class_picks_its_queue_beside_the_default_or_an_explicit_queue() -> None:
    """Interactive jobs keep today's queues; bulk jobs go to the bulk queue beside them; an
    explicit queue names the interactive queue of its family (a ``.bulk`` given is dropped,
    then the class decides), so the record's class and the queue agree."""
    from lcm_fleet.contract import JobClass
    from producer.api import target_queue
    from producer.settings import ProducerSettings

    settings = ProducerSettings(queue="lcm.render")
    sized, plain = parse_job({"prompt": "a", "width": 64, "height": 64}), parse_job({"prompt": "a"})
    bulk, interactive = JobClass.BULK, JobClass.INTERACTIVE
    assert target_queue(sized, settings) == "lcm.render.64x64"
    assert target_queue(sized, settings, job_class=bulk) == "lcm.render.64x64.bulk"
    assert target_queue(plain, settings, job_class=bulk) == "lcm.render.bulk"
    assert target_queue(sized, settings, "mine", interactive) == "mine"
    assert target_queue(sized, settings, "mine", bulk) == "mine.bulk"
    assert target_queue(plain, settings, "mine.bulk", bulk) == "mine.bulk"
    assert target_queue(plain, settings, "mine.bulk", interactive) == "mine"
