"""Secrets kept out of messages (masked_url), Redis TLS settings, artifact encryption."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from lcm_fleet.artifact.manifest import Encryption
from lcm_fleet.settings import ConnectionSettings, masked_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://default:hunter2@h:6380/1", "rediss://default:***@h:6380/1"),
        ("redis://hunter2@h/0", "redis://***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("http://127.0.0.1:8333", "http://127.0.0.1:8333"),
        ("redis://:p%40ss@h:1/0", "redis://:***@h:1/0"),
    ],
)
def test_masked_url(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_masked_url_of_an_unparseable_url_prints_no_part_of_it() -> None:
    assert "hunter2" not in masked_url("redis://:hunter2@[::1")


def test_plain_redis_gets_no_tls_arguments() -> None:
    s = ConnectionSettings(redis_url="redis://:pw@h:6379/0", redis_tls_ca_file="/ca.pem")
    assert s.redis_ssl_kwargs() == {} and s.celery_tls_config() == {}


def test_rediss_passes_the_tls_settings_to_redis_py_and_celery() -> None:
    s = ConnectionSettings(
        redis_url="rediss://:pw@h:6380/0",
        redis_tls_ca_file="/ca.pem",
        redis_tls_cert_file="/c.pem",
        redis_tls_key_file="/k.pem",
    )
    assert s.redis_ssl_kwargs() == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }
    conf = s.celery_tls_config()
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert conf["redis_backend_use_ssl"]["ssl_ca_certs"] == "/ca.pem"
    # a records Redis of its own: TLS by its own URL's scheme
    assert s.redis_ssl_kwargs("redis://other:6379/0") == {}


def test_the_producer_client_is_configured_for_rediss() -> None:
    from producer.queue import make_client

    s = ConnectionSettings(redis_url="rediss://:pw@h:6380/0", redis_tls_cert_reqs="none")
    app = make_client(s)
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert app.conf.redis_backend_use_ssl == {"ssl_cert_reqs": ssl.CERT_NONE}


# --- artifact encryption ---------------------------------------------------------------

pytest.importorskip("cryptography")

KEY = bytes(range(32))
KEY_TEXT = base64.b64encode(KEY).decode()


def test_parse_key_refuses_bad_keys_without_quoting_them() -> None:
    from worker.errors import ModelLoadError
    from worker.model.crypto import parse_key

    assert parse_key(KEY_TEXT + "\n") == KEY
    with pytest.raises(ModelLoadError, match="not valid base64") as caught:
        parse_key("secret-value!")
    assert "secret-value" not in str(caught.value)
    with pytest.raises(ModelLoadError, match="decodes to 16"):
        parse_key(base64.b64encode(b"x" * 16).decode())


def test_round_trip_and_refusals() -> None:
    from worker.errors import ModelLoadError
    from worker.model.crypto import decrypt_bytes, encrypt_bytes

    blob = encrypt_bytes(KEY, b"weights" * 100, "unet/openvino_model.bin")
    assert b"weights" not in blob
    assert decrypt_bytes(KEY, blob, "unet/openvino_model.bin", "x") == b"weights" * 100
    with pytest.raises(ModelLoadError, match="does not decrypt"):
        decrypt_bytes(bytes(32), blob, "unet/openvino_model.bin", "x")
    flipped = bytearray(blob)
    flipped[-20] ^= 1
    with pytest.raises(ModelLoadError, match="does not decrypt"):
        decrypt_bytes(KEY, bytes(flipped), "unet/openvino_model.bin", "x")
    # a file moved to another place in the artifact does not decrypt (path as associated data)
    with pytest.raises(ModelLoadError, match="does not decrypt"):
        decrypt_bytes(KEY, blob, "vae_decoder/openvino_model.bin", "x")
    with pytest.raises(ModelLoadError, match="not an lcm-fleet encrypted file"):
        decrypt_bytes(KEY, b"plain", "unet/openvino_model.bin", "x")


def test_check_key_names_what_is_missing_or_wrong() -> None:
    from lcm_fleet.artifact.manifest import Manifest
    from worker.errors import ModelLoadError
    from worker.model.crypto import ALGORITHM, check_key, key_id

    manifest = Manifest.model_validate(
        {
            "format": "lcm-fleet.artifact",
            "format_version": 1,
            "files": {"unet/openvino_model.bin.enc": {"sha256": "0" * 64, "bytes": 1}},
            "encryption": {"algorithm": ALGORITHM, "key_id": key_id(KEY)},
        }
    )
    check_key(manifest, KEY, "a")
    with pytest.raises(ModelLoadError, match="set LCM_MODEL_KEY"):
        check_key(manifest, None, "a")
    with pytest.raises(ModelLoadError, match="not the key it was encrypted with"):
        check_key(manifest, bytes(32), "a")


def test_decryptor_checks_the_plaintext_hash(tmp_path: Path) -> None:
    import hashlib

    from worker.errors import ModelLoadError
    from worker.model.crypto import Decryptor, encrypt_bytes

    rel = "unet/openvino_model.bin"
    (tmp_path / "unet").mkdir()
    (tmp_path / (rel + ".enc")).write_bytes(encrypt_bytes(KEY, b"abc", rel))
    good = Encryption(
        algorithm="AES-256-GCM", key_id="k", plaintext={rel: hashlib.sha256(b"abc").hexdigest()}
    )
    assert Decryptor(tmp_path, good, KEY).read(rel) == b"abc"
    bad = good.model_copy(update={"plaintext": {rel: "0" * 64}})
    with pytest.raises(ModelLoadError, match="decrypts to sha256"):
        Decryptor(tmp_path, bad, KEY).read(rel)


def test_settings_errors_quote_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from lcm_fleet.settings import settings_problems
    from worker.settings import WorkerSettings

    for name in ("LCM_MODEL", "LCM_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LCM_S3_ACCESS_KEY_ID", "AKIDLEAK")
    monkeypatch.setenv("LCM_S3_SECRET_ACCESS_KEY", "SECRETLEAK")
    monkeypatch.setenv("LCM_MODEL_KEY", "MODELKEYLEAK")
    monkeypatch.setenv("LCM_REDIS_URL", "redis://:PWLEAK@h/0")
    with pytest.raises(ValidationError) as caught:
        WorkerSettings()
    text = "\n".join(settings_problems(caught.value))
    assert "LCM_MODEL" in text
    for secret in ("AKIDLEAK", "SECRETLEAK", "MODELKEYLEAK", "PWLEAK"):
        assert secret not in text
    monkeypatch.setenv("LCM_MODEL_DIR", "/x")
    monkeypatch.setenv("LCM_CONCURRENCY", "x" * 500)
    with pytest.raises(ValidationError) as caught:
        WorkerSettings()
    (line,) = settings_problems(caught.value)
    assert line.startswith("LCM_CONCURRENCY:") and len(line) < 250


ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lcm_fleet", "producer", "worker", "model_build")
#: Files that build a redis-py client themselves, passing the TLS arguments they are given.
OWN_CLIENTS = {"lcm_fleet/settings.py", "lcm_fleet/consuming/broker_guard.py", "worker/metrics.py"}


def _sources() -> list[tuple[str, str]]:
    return [
        (path.relative_to(ROOT).as_posix(), path.read_text())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def test_every_redis_client_gets_the_tls_settings() -> None:
    offenders = [
        rel for rel, text in _sources() if "Redis.from_url(" in text and rel not in OWN_CLIENTS
    ]
    assert not offenders, (
        f"{offenders} build redis clients with Redis.from_url: use "
        "settings.redis_client(url, ...) so that LCM_REDIS_TLS_* apply"
    )


def test_no_url_is_formatted_into_a_message_unmasked() -> None:
    import re

    pattern = re.compile(r"\{[\w.]*(redis_url|records_url|broker_url|endpoint_url)[^}]*\}")
    offenders = [
        f"{rel}:{number}: {line.strip()}"
        for rel, text in _sources()
        for number, line in enumerate(text.splitlines(), 1)
        if pattern.search(line) and "masked_url(" not in line
    ]
    assert not offenders, offenders


def test_the_worker_and_webhook_apps_are_configured_for_rediss(tmp_path: Path) -> None:
    from producer.http.webhooks import WebhookSettings, make_app
    from worker.consumer.app import app, configure
    from worker.settings import WorkerSettings

    tls = {"redis_url": "rediss://:pw@h:6380/0", "redis_tls_ca_file": "/ca.pem"}
    hooks = make_app(WebhookSettings(api_key_pepper="p" * 32, **tls))  # type: ignore[arg-type]
    assert hooks.conf.broker_use_ssl["ssl_ca_certs"] == "/ca.pem"
    before = {key: app.conf.get(key) for key in app.conf}
    worker = configure(
        WorkerSettings(
            model_dir=tmp_path,
            s3_access_key_id="a",  # type: ignore[arg-type]
            s3_secret_access_key="b",  # type: ignore[arg-type]
            **tls,  # type: ignore[arg-type]
        )
    )
    try:
        assert worker.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert worker.conf.redis_backend_use_ssl["ssl_ca_certs"] == "/ca.pem"
    finally:  # the worker's app is a module global: leave it as other tests expect it
        worker.conf.update(before)
