"""lcm-webhooks as a real process on real Redis: a job's webhook is retried after a 500,
signed with the owner key's secret, and every attempt is recorded; a batch's too. Malformed
items on its queue are dead-lettered once each, and it keeps delivering (the same guard as
the render worker's, lcm_fleet/consuming/).

No render worker: the test moves the records itself, then sends the task by name as the
render worker does when a job or batch ends.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lcm_fleet.contract import QUEUE_WEBHOOKS, TASK_WEBHOOK, ImageRecord, Job, JobResult
from lcm_fleet.dead_letter import DeadLetterKind, DeadLetters
from lcm_fleet.records import RecordStore
from producer.http.auth import webhook_secret
from producer.http.settings import ApiSettings
from producer.http.signatures import SIGNATURE_HEADER, verify
from tests import poison
from tests.integration.conftest import API_PEPPER, ROOT

KEY_ID = "0123456789abcdef"


@dataclass
class Receiver:
    url: str
    statuses: list[int]
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, count: int, timeout_s: float, log: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.posts) >= count, (
            f"{len(self.posts)} POSTs of {count} after {timeout_s} s:\n"
            + log.read_text(errors="replace")[-3000:]
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="", statuses=[500])
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                rec.posts.append((dict(self.headers.items()), body))
                status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/lcm?token=receiver-secret"
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def deliverer(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path_factory.mktemp("webhooks") / "lcm-webhooks.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(service_env)
    env.update(
        LCM_API_KEY_PEPPER=API_PEPPER,
        LCM_WEBHOOK_ALLOW_PRIVATE_URLS="true",  # the receiver is on loopback
        LCM_WEBHOOK_MAX_ATTEMPTS="4",
        LCM_WEBHOOK_BACKOFF_BASE_S="0.2",
        LCM_WEBHOOK_BACKOFF_CAP_S="0.5",
        LCM_WEBHOOK_TIMEOUT_S="5",
        LCM_MAX_MESSAGE_BYTES=str(poison.MAX_MESSAGE_BYTES),
        LCM_DEAD_LETTER_MAX="100000",
        PYTHONPATH=str(ROOT),
    )
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.http.webhooks", "--concurrency", "4"],
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
    yield proc, log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert "receiver-secret" not in log.read_text(errors="replace")  # the URL's query
    assert "whsec_" not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def records(service_env: dict[str, str]) -> RecordStore:
    return RecordStore(redis.Redis.from_url(service_env["LCM_REDIS_URL"]), 3600)


def send(service_env: dict[str, str], *args: str) -> None:
    from celery import Celery

    client = Celery("test_sender", broker=service_env["LCM_REDIS_URL"])
    client.conf.update(task_serializer="json", accept_content=["json"])
    client.send_task(TASK_WEBHOOK, args=list(args), queue=QUEUE_WEBHOOKS)


def result_of(job: Job) -> JobResult:
    image = ImageRecord(
        index=0,
        seed=job.seed,
        key=f"jobs/{job.job_id}/000.png",
        uri="s3://x",
        sha256="0" * 64,
        bytes=10,
    )
    return JobResult(
        job_id=job.job_id, prompt=job.prompt, steps=job.steps, guidance_scale=8.0, width=64,
        height=64, images=[image], model_manifest_sha256="1" * 64,
        durations_s={"total": 0.5}, worker="test",
    )  # fmt: skip


def secret() -> bytes:
    return webhook_secret(ApiSettings(api_key_pepper=API_PEPPER), KEY_ID)  # type: ignore[arg-type]


def test_job_webhook_retried_after_500_signed_and_every_attempt_recorded(
    deliverer: tuple[subprocess.Popen[bytes], Path],
    receiver: Receiver,
    records: RecordStore,
    service_env: dict[str, str],
) -> None:
    job = Job(prompt="a lighthouse at dusk", job_id=f"wh-{uuid.uuid4().hex[:12]}")
    records.create_job(job, KEY_ID, webhook_url=receiver.url)
    records.start(job, "test-worker")
    assert records.succeed(job.job_id, result_of(job)).done
    send(service_env, "job", job.job_id, "job.succeeded")

    receiver.wait_for(2, 30, deliverer[1])
    time.sleep(0.5)  # the second attempt's record is written after the answer
    assert len(receiver.posts) == 2
    bodies = []
    for headers, body in receiver.posts:
        assert verify(secret(), headers[SIGNATURE_HEADER], body)
        assert not verify(b"whsec_another", headers[SIGNATURE_HEADER], body)
        bodies.append(json.loads(body))
    first, second = bodies
    assert first["event"] == "job.succeeded" and first["kind"] == "job"
    assert first["id"] == job.job_id and first["data"]["id"] == job.job_id
    assert first["data"]["state"] == "succeeded"
    assert first["data"]["result"]["images"][0]["seed"] == job.seed
    assert first["delivery_id"] == second["delivery_id"]  # receivers dedupe on it
    assert [h["X-LCM-Delivery-Attempt"] for h, _ in receiver.posts] == ["1", "2"]

    attempts = records.webhook_attempts(job.job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 500), (2, 200)]
    for a in attempts:
        assert a["url"] == receiver.url and a["error"] is None and a["duration_s"] >= 0
        assert a["event"] == "job.succeeded" and a["at"] <= time.time()
    assert attempts[0]["at"] < attempts[1]["at"]


def test_delivery_gives_up_after_max_attempts_and_batch_attempts_are_recorded(
    deliverer: tuple[subprocess.Popen[bytes], Path],
    receiver: Receiver,
    records: RecordStore,
    service_env: dict[str, str],
) -> None:
    receiver.statuses[:] = [503] * 10
    batch_id = f"whb-{uuid.uuid4().hex[:12]}"
    records.create_batch(batch_id, KEY_ID, webhook_url=receiver.url)
    job = Job(prompt="one", job_id=f"{batch_id}-0")
    records.create_job(job, KEY_ID, batch_id=batch_id)
    assert records.seal_batch(batch_id) is False
    records.start(job, "test-worker")
    assert records.succeed(job.job_id, result_of(job)).batch_finished
    send(service_env, "batch", batch_id, "batch.finished")

    receiver.wait_for(4, 30, deliverer[1])
    time.sleep(2)  # LCM_WEBHOOK_MAX_ATTEMPTS=4: no fifth
    assert len(receiver.posts) == 4
    attempts = records.batch_webhook_attempts(batch_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(n, 503) for n in (1, 2, 3, 4)]
    body: dict[str, Any] = json.loads(receiver.posts[0][1])
    assert body["event"] == "batch.finished" and body["data"]["counts"]["succeeded"] == 1
    assert body["data"]["job_ids"] == [job.job_id]
    assert verify(secret(), receiver.posts[0][0][SIGNATURE_HEADER], receiver.posts[0][1])
    # The job itself had no webhook: nothing recorded on it.
    assert records.webhook_attempts(job.job_id) == []


def test_malformed_items_on_its_queue_are_dead_lettered_once_and_deliveries_go_on(
    deliverer: tuple[subprocess.Popen[bytes], Path],
    receiver: Receiver,
    records: RecordStore,
    service_env: dict[str, str],
) -> None:
    proc, log = deliverer
    receiver.statuses[:] = []
    r = redis.Redis.from_url(service_env["LCM_REDIS_URL"])
    since = time.time()
    pushed: collections.Counter[str] = collections.Counter()
    delivered: list[str] = []

    @settings(
        max_examples=8,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(items=st.lists(poison.bad_items(QUEUE_WEBHOOKS, TASK_WEBHOOK), min_size=10, max_size=30))
    def throw(items: list[bytes]) -> None:
        r.lpush(QUEUE_WEBHOOKS, *items)
        pushed.update(hashlib.sha256(i).hexdigest() for i in items)
        # A good delivery queued after the items (FIFO): once it is posted, every item
        # before it was taken.
        job = Job(prompt="after poison", job_id=f"whp-{uuid.uuid4().hex[:12]}")
        records.create_job(job, KEY_ID, webhook_url=receiver.url)
        records.start(job, "test-worker")
        assert records.succeed(job.job_id, result_of(job)).done
        send(service_env, "job", job.job_id, "job.succeeded")
        receiver.wait_for(len(delivered) + 1, 30, log)
        delivered.append(job.job_id)
        assert proc.poll() is None

    throw()
    assert [json.loads(body)["id"] for _, body in receiver.posts] == delivered
    entries = DeadLetters(r).entries()
    counts = poison.dead_lettered_since(r, since)
    wrong = {h: (pushed[h], counts[h]) for h in pushed if counts[h] != pushed[h]}
    assert not wrong, f"{len(wrong)} of {len(pushed)} items not dead-lettered exactly once"
    mine = [e for e in entries if e.sha256 in pushed]
    assert all(e.reason and e.kind in DeadLetterKind for e in mine)
    assert {e.queue for e in mine if e.queue} <= {QUEUE_WEBHOOKS}
    text = log.read_text(errors="replace")
    assert "Unrecoverable error" not in text and "dead-lettered as" in text
    assert proc.poll() is None
