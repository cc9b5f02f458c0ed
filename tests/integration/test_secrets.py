"""Redis with a password and TLS (``rediss://``) through every role, and no secret in any log,
result or error message.

The test starts its own redis-server (``--requirepass``, ``--tls-port``, a CA and server
certificate it makes with ``cryptography``) and runs a full path on it: a real `lcm-worker`
serving an encrypted artifact, `lcm-api`, `lcm-webhooks` and a webhook receiver, a job
submitted over HTTP that ends in a webhook, then bad credentials of every kind. Every
secret has a distinctive value; every log file and every result is grepped for each.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lcm_fleet.keys import result_key
from lcm_fleet.settings import ConnectionSettings, masked_url
from producer.http.auth import split_key, webhook_secret
from producer.http.settings import ApiSettings
from tests.integration.conftest import (
    ROOT,
    ApiProcess,
    api_env,
    run_cli,
    start_api,
    start_worker,
    stop_api,
    stop_worker,
    worker_env,
)

TLS_PORT = 16391
PLAIN_PORT = 16390
PASSWORD = f"redispw{uuid.uuid4().hex}"
PEPPER = f"pepper{uuid.uuid4().hex}"
MODEL_KEY = base64.b64encode(os.urandom(32)).decode()
RECEIVER_TOKEN = f"rcvtoken{uuid.uuid4().hex}"
WRONG_PASSWORD = f"wrongpw{uuid.uuid4().hex}"
WRONG_S3_SECRET = f"wrongs3{uuid.uuid4().hex}"
WRONG_API_KEY = f"lcm_0123456789abcdef_{uuid.uuid4().hex}"


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(key: Any, name: str) -> Path:
        path = folder / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lcm-fleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"] = write_key(key, "server.key")
    return paths


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"redis-server not listening on {port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """redis-server with a password, on a TLS port and a plain one."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    d = tmp_path_factory.mktemp("secure-redis")
    certs = _certificates(d)
    log = d / "redis.log"
    args = [
        "redis-server",
        "--port", str(PLAIN_PORT), "--bind", "127.0.0.1",
        "--tls-port", str(TLS_PORT),
        "--tls-cert-file", str(certs["cert"]),
        "--tls-key-file", str(certs["key"]),
        "--tls-ca-cert-file", str(certs["ca"]),
        "--tls-auth-clients", "no",
        "--requirepass", PASSWORD,
        "--save", "", "--appendonly", "no", "--dir", str(d),
        "--logfile", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(TLS_PORT, proc, log)
        yield {
            "url": f"rediss://:{PASSWORD}@127.0.0.1:{TLS_PORT}/0",
            "plain_url": f"redis://:{PASSWORD}@127.0.0.1:{PLAIN_PORT}/0",
            "ca": str(certs["ca"]),
            "log": log,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tls_env(service_env: dict[str, str], secure_redis: dict[str, Any]) -> dict[str, str]:
    return {
        **service_env,
        "LCM_REDIS_URL": secure_redis["url"],
        "LCM_REDIS_TLS_CA_FILE": secure_redis["ca"],
    }


def test_masked_url_hides_the_password() -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{TLS_PORT}/0"
    assert masked_url(url) == f"rediss://:***@127.0.0.1:{TLS_PORT}/0"
    assert PASSWORD not in masked_url(f"redis://user:{PASSWORD}@h/0?password={PASSWORD}")


def test_the_clients_need_the_ca_and_the_password(secure_redis: dict[str, Any]) -> None:
    ok = ConnectionSettings(redis_url=secure_redis["url"], redis_tls_ca_file=secure_redis["ca"])
    assert ok.redis_client(socket_timeout=5).ping()
    no_ca = ConnectionSettings(redis_url=secure_redis["url"])
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        no_ca.redis_client(socket_timeout=5).ping()
    wrong = ConnectionSettings(
        redis_url=secure_redis["url"].replace(PASSWORD, WRONG_PASSWORD),
        redis_tls_ca_file=secure_redis["ca"],
    )
    with pytest.raises(redis.exceptions.AuthenticationError) as caught:
        wrong.redis_client(socket_timeout=5).ping()
    assert WRONG_PASSWORD not in str(caught.value)


class Receiver:
    def __init__(self) -> None:
        self.posts: list[bytes] = []
        lock = threading.Lock()
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    posts.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/hooks/lcm?token={RECEIVER_TOKEN}"


def _start_webhooks(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.http.webhooks", "--concurrency", "2"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http(api: ApiProcess, method: str, path: str, key: str, body: Any = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{api.url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _dump(client: Any, key: bytes) -> str:
    """A Redis key's value as text, whatever its type (result, record, list of events)."""
    kind = client.type(key).decode()
    if kind == "string":
        value: Any = client.get(key)
    elif kind == "hash":
        value = client.hgetall(key)
    elif kind == "list":
        value = client.lrange(key, 0, -1)
    elif kind == "zset":
        value = client.zrange(key, 0, -1)
    elif kind == "stream":
        value = client.xrange(key)
    else:
        value = client.smembers(key) if kind == "set" else b""
    return repr(value)


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run("worker.cli", "--check", env=env)


def test_full_path_over_tls_with_a_password_leaks_no_secret(
    service_env: dict[str, str],
    secure_redis: dict[str, Any],
    model_dirs: dict[str, Path],
    s3: Any,
    tmp_path: Path,
) -> None:
    tls_env = _tls_env(service_env, secure_redis)
    queue = f"lcm.test.secrets.{uuid.uuid4().hex[:8]}"
    (tmp_path / "model.key").write_text(MODEL_KEY)
    encrypted = tmp_path / "encrypted"
    run_cli(
        "model_build.cli",
        "encrypt",
        str(model_dirs["int8"]),
        str(encrypted),
        "--key-file",
        str(tmp_path / "model.key"),
    )
    outputs: list[str] = []

    # the worker: Celery broker and result backend, records, heartbeat, all over rediss://
    wenv = worker_env(tls_env, encrypted, tmp_path, queue, LCM_MODEL_KEY=MODEL_KEY)
    check = _check(wenv)
    outputs += [check.stdout, check.stderr]
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"broker rediss://:***@127.0.0.1:{TLS_PORT}/0" in check.stdout
    worker = start_worker(wenv, tmp_path / "worker.log")
    common = {
        "LCM_API_KEY_PEPPER": PEPPER,
        "LCM_WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the receiver is on loopback
        "LCM_WEBHOOK_BACKOFF_BASE_S": "0.2",
        "LCM_WEBHOOK_BACKOFF_CAP_S": "0.5",
    }
    aenv = api_env(tls_env, queue, **common)
    henv = {**aenv, "PYTHONPATH": str(ROOT)}
    hooks = _start_webhooks(henv, tmp_path / "lcm-webhooks.log")
    api = start_api(aenv, tmp_path / "api.log")
    receiver = Receiver()
    try:
        key = api.create_key("secrets-test")
        key_id = split_key(key)
        assert key_id is not None
        whsec = webhook_secret(ApiSettings(api_key_pepper=PEPPER), key_id).decode()  # type: ignore[arg-type]
        status, body = _http(
            api,
            "POST",
            "/v1/jobs",
            key,
            {"prompt": "a lighthouse at dusk", "seed": 4, "webhook_url": receiver.url},
        )
        assert status == 202, body
        job_id = json.loads(body)["id"]
        deadline = time.monotonic() + 180
        view = ""
        while time.monotonic() < deadline:
            status, view = _http(api, "GET", f"/v1/jobs/{job_id}", key)
            if '"succeeded"' in view or '"failed"' in view:
                break
            time.sleep(0.5)
        assert '"succeeded"' in view, view + worker.log_text()[-3000:]
        deadline = time.monotonic() + 60
        while not receiver.posts and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.posts, (tmp_path / "lcm-webhooks.log").read_text()
        # what the job's owner reads: the job's view and its webhook, with presigned image
        # URLs (SigV4 puts the access key id, never the secret, in each) and the webhook URL
        views = [view, *(p.decode() for p in receiver.posts)]
        assert "X-Amz-Signature" in view
        result = s3.get_object(Bucket=service_env["LCM_S3_BUCKET"], Key=result_key("", job_id))
        outputs.append(result["Body"].read().decode())
        backend = ConnectionSettings(
            redis_url=secure_redis["url"], redis_tls_ca_file=secure_redis["ca"]
        ).redis_client(socket_timeout=5)
        # what Redis keeps of the job (Celery's result, the record, its webhook attempts);
        # the record keeps the webhook URL itself, the one value it must keep to deliver
        stored = [_dump(backend, k) for k in backend.keys(f"*{job_id}*")]
        assert stored

        # bad credentials of every kind: each refused, none quoted
        status, body = _http(api, "GET", f"/v1/jobs/{job_id}", WRONG_API_KEY)
        assert status == 401, body
        outputs.append(body)
        wrong_redis = {
            **tls_env,
            "LCM_REDIS_URL": secure_redis["url"].replace(PASSWORD, WRONG_PASSWORD),
            "LCM_PUBLISH_BUDGET_S": "1",
            "PYTHONPATH": str(ROOT),
        }
        submitted = _run("producer.cli", "submit", "a cat", "--queue", queue, env=wrong_redis)
        assert submitted.returncode != 0
        assert f"rediss://:***@127.0.0.1:{TLS_PORT}/0" in submitted.stderr, submitted.stderr
        outputs += [submitted.stdout, submitted.stderr]
        bad = _run(
            "worker.cli", "--check", env={**wenv, "LCM_REDIS_URL": wrong_redis["LCM_REDIS_URL"]}
        )
        assert bad.returncode != 0 and "***" in bad.stderr, bad.stdout + bad.stderr
        outputs += [bad.stdout, bad.stderr]
        bad = _run(
            "worker.cli", "--check", env={**wenv, "LCM_S3_SECRET_ACCESS_KEY": WRONG_S3_SECRET}
        )
        assert bad.returncode != 0, bad.stdout + bad.stderr
        outputs += [bad.stdout, bad.stderr]
        bad = _run(
            "worker.cli",
            "--check",
            env={**wenv, "LCM_MODEL_KEY": base64.b64encode(os.urandom(32)).decode()},
        )
        assert bad.returncode == 2 and "LCM_MODEL_KEY is not the key" in bad.stderr
        outputs += [bad.stdout, bad.stderr]
    finally:
        receiver.server.shutdown()
        stop_api(api)
        _stop(hooks)
        assert stop_worker(worker) == 0

    secrets = {
        "Redis password": PASSWORD,
        "wrong Redis password": WRONG_PASSWORD,
        "S3 access key id": service_env["LCM_S3_ACCESS_KEY_ID"],
        "S3 secret": service_env["LCM_S3_SECRET_ACCESS_KEY"],
        "wrong S3 secret": WRONG_S3_SECRET,
        "API key": key,
        "wrong API key": WRONG_API_KEY,
        "LCM_API_KEY_PEPPER": PEPPER,
        "webhook secret": whsec,
        "LCM_MODEL_KEY": MODEL_KEY,
    }
    logs = [p for p in tmp_path.rglob("*.log")] + [secure_redis["log"]]
    assert len(logs) >= 4
    texts = {str(p): p.read_text(errors="replace") for p in logs}
    texts.update({f"output {i}": text for i, text in enumerate(outputs)})
    assert (
        "lighthouse" in texts[str(tmp_path / "worker.log")]
        or job_id in texts[str(tmp_path / "worker.log")]
    )
    texts.update({f"redis {i}": text for i, text in enumerate(stored)})
    identifier = {"S3 access key id"}
    texts.update({f"view {i}": text for i, text in enumerate(views)})
    leaks = [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, value in secrets.items()
        if value in text and not (where.startswith("view") and name in identifier)
    ]
    assert not leaks, leaks
    # the webhook URL's query (a receiver's token) is in no log; the job's owner reads the
    # URL back in the job's view, and the record keeps it to deliver
    assert not [p for p in logs if RECEIVER_TOKEN in p.read_text(errors="replace")]
