"""Locust users of bench/api/run.py: submit jobs, or poll their status, back to back.

Closed loop (no wait between requests): each user has one request in flight, so N users are
N concurrent clients. With ``LCM_BENCH_USER_RATE`` each user paces itself to that many
requests/s (locust's ``constant_throughput``), so N users offer N times that load.
``LCM_BENCH_MODE`` picks ``submit`` or ``poll``; submitted ids go to
``LCM_BENCH_IDS_OUT`` (one per line) when the run stops; polls read ids from
``LCM_BENCH_IDS_IN``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, events, task

MODE = os.environ.get("LCM_BENCH_MODE", "submit")
#: Requests/s of each user (paced, an open-ish load); unset: closed loop.
USER_RATE = float(os.environ.get("LCM_BENCH_USER_RATE") or 0)
KEY = os.environ["LCM_BENCH_KEY"]
ACCEPTED: list[str] = []
POLL_IDS = (
    Path(os.environ["LCM_BENCH_IDS_IN"]).read_text().split()
    if os.environ.get("LCM_BENCH_IDS_IN")
    else []
)


class Client(FastHttpUser):
    wait_time = constant_throughput(USER_RATE) if USER_RATE else constant(0)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        self.n = 0

    @task
    def one(self) -> None:
        if MODE == "poll":
            job_id = random.choice(POLL_IDS)
            self.client.get(f"/v1/jobs/{job_id}", headers=self.headers, name="GET /v1/jobs/{id}")
            return
        self.n += 1
        body = f'{{"prompt": "a lighthouse at dusk, variation {self.n}", "steps": 4}}'
        with self.client.post(
            "/v1/jobs", data=body, headers=self.headers, name="POST /v1/jobs", catch_response=True
        ) as answer:
            if answer.status_code == 202:
                ACCEPTED.append(answer.json()["id"])
                answer.success()
            else:
                answer.failure(f"status {answer.status_code}")


@events.quitting.add_listener
def _write_ids(environment: object, **_: object) -> None:
    out = os.environ.get("LCM_BENCH_IDS_OUT")
    if out:
        Path(out).write_text("\n".join(ACCEPTED) + "\n")
