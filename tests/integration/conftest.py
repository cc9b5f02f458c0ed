"""The integration tier: the real model build, a real `lcm-worker` process, real Redis, real S3.

One session builds the tiny INT8 artifact with the real model_build path (export with
optimum-intel, NNCF calibration and quantization), starts SeaweedFS through
deploy/local/services.py (and Redis if none answers), and runs `lcm-worker` as a
subprocess on a queue and Redis database of its own.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_S3_PORT = int(os.environ.get("LCM_TEST_S3_PORT", "18333"))
TEST_REDIS_URL = os.environ.get("LCM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
METRICS_PORT = int(os.environ.get("LCM_TEST_METRICS_PORT", "19464"))


def load_services() -> Any:
    spec = importlib.util.spec_from_file_location("lcm_services", ROOT / "deploy/local/services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    services = load_services()
    state = tmp_path_factory.mktemp("services")
    env = services.start(state, s3_port=TEST_S3_PORT, redis_url=TEST_REDIS_URL, bucket="lcm-test")
    yield {"module": services, "state": state, "env": env}
    services.stop(state)


@pytest.fixture(scope="session")
def service_env(services_state: dict[str, Any]) -> dict[str, str]:
    return dict(services_state["env"])


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=check,
        timeout=900,
    )


def run_module(
    *args: str, env: dict[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` with exactly ``env`` (nothing of this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def worker_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``lcm-worker --check`` with exactly ``env``."""
    return run_module("worker.cli", "--check", env=env)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny LCM, its fp32 IR artifact and its INT8 artifact, built by the real CLI."""
    base = tmp_path_factory.mktemp("models")
    tiny, int8 = base / "tiny", base / "tiny-int8"
    run_cli("model_build.cli", "tiny", str(tiny))
    run_cli("model_build.cli", "build", str(tiny), str(int8), "--samples", "40", "--no-progress")
    return {"tiny": tiny, "fp32": base / "tiny-int8.fp32", "int8": int8}


@pytest.fixture(scope="session")
def reference_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped reference LCM, exported and quantized by the real CLI (quality gate with
    prompt adherence included)."""
    out = tmp_path_factory.mktemp("reference") / "reference-int8"
    weights = ROOT / "model_build" / "reference" / "weights"
    run_cli("model_build.cli", "build", str(weights), str(out), "--samples", "80", "--no-progress")
    return out


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for_log(worker: WorkerProcess, needle: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in worker.log_text():
            return
        if worker.proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({worker.proc.returncode}):\n{worker.log_text()[-3000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(
        f"worker log has no {needle!r} after {timeout_s}s:\n{worker.log_text()[-3000:]}"
    )


def worker_env(
    service_env: dict[str, str], model_dir: Path, tmp: Path, queue: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(service_env)
    env.update(
        LCM_MODEL_DIR=str(model_dir),
        LCM_QUEUE=queue,
        LCM_CACHE_DIR=str(tmp / "ov-cache"),
        LCM_UPLOAD_BACKOFF_BASE_S="0.2",
        LCM_UPLOAD_BACKOFF_CAP_S="0.5",
        LCM_UPLOAD_ATTEMPTS="3",
        LCM_RETRY_BACKOFF_BASE_S="1",
        LCM_RETRY_BACKOFF_CAP_S="2",
        LCM_TASK_MAX_RETRIES="6",
        LCM_METRICS_PORT="0",
    )
    # Build-only packages cannot be imported in the worker (see worker_site/sitecustomize.py).
    env["PYTHONPATH"] = str(Path(__file__).parent / "worker_site")
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path) -> WorkerProcess:
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(proc=proc, log=log, env=env)
    wait_for_log(worker, "pipeline loaded", timeout_s=180)
    wait_for_log(worker, " ready.", timeout_s=60)
    return worker


def stop_worker(worker: WorkerProcess) -> int:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
    return worker.proc.returncode


@pytest.fixture(scope="session")
def queue_name() -> str:
    return f"lcm.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def worker(
    service_env: dict[str, str],
    model_dirs: dict[str, Path],
    queue_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("worker")
    env = worker_env(
        service_env, model_dirs["int8"], tmp, queue_name, LCM_METRICS_PORT=str(METRICS_PORT)
    )
    proc = start_worker(env, tmp / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="session")
def producer_settings(service_env: dict[str, str], queue_name: str) -> Any:
    from producer.settings import ProducerSettings

    return ProducerSettings(
        redis_url=service_env["LCM_REDIS_URL"],
        queue=queue_name,
        s3_endpoint_url=service_env["LCM_S3_ENDPOINT_URL"],
        s3_bucket=service_env["LCM_S3_BUCKET"],
        s3_access_key_id=service_env["LCM_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=service_env["LCM_S3_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="session")
def s3(producer_settings: Any) -> Any:
    from lcm_fleet.storage import s3_client

    return s3_client(
        producer_settings,
        producer_settings.s3_access_key_id.get_secret_value(),
        producer_settings.s3_secret_access_key.get_secret_value(),
    )


# ---------------------------------------------------------------- the HTTP API (lcm-api)

API_PEPPER = "test-pepper-not-a-secret"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    url: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def create_key(self, name: str, *options: str) -> str:
        """A new API key, made by the real `lcm-api keys create`."""
        out = run_cli(
            "producer.http.cli", "keys", "create", name, "--quiet", *options, env=self.env
        )
        return out.stdout.strip()


def api_env(service_env: dict[str, str], queue: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(service_env)
    env.update(
        LCM_QUEUE=queue,
        LCM_API_KEY_PEPPER=API_PEPPER,
        LCM_WEBHOOK_ALLOW_PRIVATE_URLS="false",
        LCM_PUBLISH_BUDGET_S="2",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start_api(env: dict[str, str], log: Path, port: int | None = None) -> ApiProcess:
    import urllib.request

    port = port or free_port()
    env = {**env, "LCM_API_HOST": "127.0.0.1", "LCM_API_PORT": str(port)}
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.http.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    api = ApiProcess(proc=proc, log=log, env=env, url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lcm-api exited ({proc.returncode}):\n{api.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api.url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return api
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"lcm-api did not answer /healthz in 60 s:\n{api.log_text()[-3000:]}")


def stop_api(api: ApiProcess) -> None:
    if api.proc.poll() is None:
        api.proc.send_signal(signal.SIGTERM)
        try:
            api.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.proc.kill()
            api.proc.wait()
