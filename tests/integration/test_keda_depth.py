"""The number KEDA scales the workers on, read as deploy/k8s/keda.yaml tells KEDA to read it,
equals the jobs the queues really hold: real lcm-api, real Redis, jobs published by the
producer (interactive and bulk) and by Celery's own send_task with a priority (so they sit in
kombu's priority lists), some of them taken by a real kombu consumer (so they sit in the
``unacked`` hash, invisible to LLEN)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
import yaml

from lcm_fleet.consuming.depth import priority_lists
from lcm_fleet.contract import TASK_RENDER, Job, JobClass, parse_job
from lcm_fleet.keys import job_key
from producer.api import submit_job
from producer.queue import cached_client
from producer.settings import ProducerSettings
from tests.integration.conftest import ApiProcess, api_env, start_api, stop_api

KEDA = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "keda.yaml"


def _trigger() -> dict[str, Any]:
    """The metrics-api trigger of the ScaledObject of the lcm-worker Deployment."""
    docs = [d for d in yaml.safe_load_all(KEDA.read_text()) if d]
    (scaled,) = [
        d
        for d in docs
        if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == "lcm-worker"
    ]
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "metrics-api"]
    return dict(trigger["metadata"])


def gjson(document: Any, path: str) -> Any:
    """KEDA's valueLocation for ``format: json`` is a GJSON path; this test allows only its
    plain form (keys and indexes joined by dots), which GJSON reads as a walk down the
    document, so that what is read here is what KEDA reads."""
    assert re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", path), f"not a plain path: {path}"
    for part in path.split("."):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


@pytest.fixture(scope="module")
def api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    base = f"lcm.test.keda.{uuid.uuid4().hex[:8]}"
    proc = start_api(api_env(service_env, base), tmp_path_factory.mktemp("keda") / "api.log")
    yield proc
    stop_api(proc)


def _job(**fields: Any) -> Job:
    return parse_job({"prompt": "a red circle", "seed": 1, **fields})


def test_the_value_keda_reads_is_every_job_waiting_or_held(api: ApiProcess) -> None:
    from kombu import Connection

    trigger = _trigger()
    assert trigger["format"] == "json" and trigger["authMode"] == "bearer"
    url = urlsplit(trigger["url"])
    params = parse_qs(url.query)
    base = api.env["LCM_QUEUE"]
    (size,) = params["size"]
    width, height = (int(n) for n in size.split("x"))
    assert params["unsized"] == ["true"]
    settings = ProducerSettings(redis_url=api.env["LCM_REDIS_URL"], queue=base)
    sized = f"{base}.{size}"
    families = [base, f"{base}.bulk", sized, f"{sized}.bulk"]
    every_list = [name for q in families for name in priority_lists(q)]
    other = f"{base}.8x8"  # another size class: another Deployment's family, not counted
    import redis

    broker = redis.Redis.from_url(api.env["LCM_REDIS_URL"])
    jobs: list[Job] = []
    connection = Connection(api.env["LCM_REDIS_URL"])
    taken: list[Any] = []
    try:
        # As producers publish: single jobs interactive, batch jobs bulk, to their size's queue.
        for fields, job_class in (
            ({}, JobClass.INTERACTIVE),
            ({}, JobClass.INTERACTIVE),
            ({}, JobClass.BULK),
            ({"width": width, "height": height}, JobClass.INTERACTIVE),
            ({"width": width, "height": height}, JobClass.BULK),
            ({"width": width, "height": height}, JobClass.BULK),
        ):
            job = _job(**fields)
            submit_job(job, settings, job_class=job_class)
            jobs.append(job)
        # Celery's own send_task with a priority: kombu puts them in the priority lists.
        client = cached_client(settings)
        for queue, priority in ((sized, 5), (f"{base}.bulk", 9), (sized, 2)):
            job = _job(width=width, height=height)
            client.send_task(
                TASK_RENDER,
                args=[job.model_dump(mode="json")],
                task_id=job.job_id,
                queue=queue,
                priority=priority,
                retry=False,
            )
            jobs.append(job)
        stray = _job()
        client.send_task(TASK_RENDER, args=[{}], task_id=stray.job_id, queue=other, retry=False)
        assert broker.llen(f"{sized}\x06\x163") == 1 and broker.llen(f"{base}.bulk\x06\x169") == 1
        # A real consumer takes three (unacknowledged): they leave the lists for `unacked`.
        channel = connection.channel()
        for queue in (sized, sized, f"{base}.bulk"):
            message = channel.basic_get(queue, no_ack=False)
            assert message is not None
            taken.append(message)
        waiting = sum(int(broker.llen(name)) for name in every_list)
        assert waiting == len(jobs) - len(taken)
        assert broker.llen(sized) < 3  # what the old trigger read: LLEN of one list

        target = url._replace(scheme="http", netloc=urlsplit(api.url).netloc)
        key = api.create_key("keda")
        answer = httpx.get(
            urlunsplit(target), headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert gjson(body, trigger["valueLocation"]) == len(jobs) == 9
        by_family = {q["queue"]: q for q in body["queues"]}
        assert set(by_family) == {base, sized}
        assert (by_family[base]["interactive_waiting"], by_family[base]["bulk_waiting"]) == (2, 1)
        assert by_family[base]["held"] == 1
        assert (by_family[sized]["waiting"], by_family[sized]["held"]) == (3, 2)
        assert body["held"] == len(taken) and body["waiting"] == waiting

        # Acknowledged (the jobs done): they leave the count.
        for message in taken:
            message.ack()
        taken.clear()
        again = httpx.get(urlunsplit(target), headers={"Authorization": f"Bearer {key}"})
        assert gjson(again.json(), trigger["valueLocation"]) == len(jobs) - 3
        # Without parameters: every family of LCM_QUEUE known, the stray one's included.
        everything = httpx.get(
            f"{api.url}/v1/queues", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert {q["queue"] for q in everything["queues"]} >= {base, sized}
        bad = httpx.get(f"{api.url}/v1/queues?size=big", headers={"Authorization": f"Bearer {key}"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "size[0]"
    finally:
        for message in taken:
            message.ack()
        connection.release()
        broker.delete(*every_list, *priority_lists(other), *(job_key(j.job_id) for j in jobs))
        broker.close()
