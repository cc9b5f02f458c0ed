"""The poison stream: malformed queue items between good jobs. Every good job succeeds,
every bad item is dead-lettered exactly once, the worker never exits."""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from typing import Any

import redis

from lcm_fleet.contract import TASK_RENDER, queue_for
from lcm_fleet.keys import DEAD_LETTER_KEY
from producer.api import submit
from producer.queue import make_client
from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    report,
    wait_finished,
)

JOB = {"width": 512, "height": 512, "steps": 2}
HUGE_BYTES = 8 * 1024 * 1024


def _template(settings: Any, r: redis.Redis) -> dict[str, Any]:
    """A real envelope as the producer's Celery client writes it (on a queue nobody reads)."""
    scratch = f"{settings.queue}.template"
    make_client(settings).send_task(
        TASK_RENDER, args=[{"prompt": "template"}], task_id=uuid.uuid4().hex, queue=scratch
    )
    raw = r.rpop(scratch)
    assert raw is not None
    return dict(json.loads(raw))


def _b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def _bad_items(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, marker, raw item); the marker is what finds the item's dead-letter entry."""
    items: list[tuple[str, str, str]] = []

    def envelope(name: str, change: Any) -> None:
        marker = f"poison-{name}-{uuid.uuid4().hex[:8]}"
        env = copy.deepcopy(template)
        env["headers"]["id"] = marker
        env["properties"]["correlation_id"] = marker
        change(env, marker)
        # The marker first, so it is in any prefix of the item that is kept.
        items.append((name, marker, json.dumps({"lcm_faults_marker": marker, **env})))

    for raw in ("[1,2,3]", "[]"):
        items.append((f"json_array {raw}", raw, raw))
    strings = f"poison-strings-{uuid.uuid4().hex[:8]}"
    items.append(("json_array_of_strings", strings, json.dumps([strings, "b", "c"])))
    envelope("body_not_base64", lambda e, m: e.update(body=f"!!! {m} is not base64 !!!"))
    envelope("body_encoding_rot13", lambda e, m: e["properties"].update(body_encoding="rot13"))
    envelope("delivery_tag_dict", lambda e, m: e["properties"].update(delivery_tag={"m": m}))
    envelope("timelimit_x", lambda e, m: e["headers"].update(timelimit="x"))
    envelope("body_not_a_list", lambda e, m: e.update(body=_b64({"marker": m})))
    envelope(
        "huge_body",
        lambda e, m: e.update(body=_b64([[{"prompt": "x" * HUGE_BYTES, "job_id": m}], {}, {}])),
    )
    return items


def _entries(r: redis.Redis) -> list[tuple[str, list[str]]]:
    """Each dead-letter entry as (its whole text, its top-level string values)."""
    out = []
    for raw in r.lrange(DEAD_LETTER_KEY, 0, -1):
        text = raw.decode(errors="replace")
        try:
            entry = json.loads(text)
        except ValueError:
            out.append((text, [text]))
            continue
        fields = entry.values() if isinstance(entry, dict) else []
        values = [v for v in fields if isinstance(v, str)]
        out.append((text, values))
    return out


def _count(entries: list[tuple[str, list[str]]], marker: str) -> int:
    if marker.startswith("["):  # the bare arrays: the item itself is the marker
        return sum(any(v.strip() == marker for v in values) for _, values in entries)
    return sum(marker in text for text, _ in entries)


def test_poison_items_between_good_jobs(scenario, s3):
    sc = scenario()
    r = redis.Redis.from_url(sc.settings.redis_url)
    worker = sc.start_worker("worker.log", sc.env(LCM_SIZES="512x512"))
    bad = _bad_items(_template(sc.settings, r))
    good = []
    for i, (_, _, raw) in enumerate(bad):
        good.append(submit(f"good {i}", settings=sc.settings, seed=i, **JOB))
        job = good[-1].job
        assert job is not None
        r.lpush(queue_for(job, sc.settings.queue), raw)  # the good jobs' own queue
    good.append(submit("good last", settings=sc.settings, seed=99, **JOB))
    started = time.time()
    ids = [h.job_id for h in good]
    recs = wait_finished(sc.settings, ids, JOB_SLACK_S, workers=[worker])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        entries = _entries(r)
        if all(_count(entries, m) >= 1 for _, m, _ in bad) or worker.proc.poll() is not None:
            break
        time.sleep(0.2)
    counts = {name: _count(entries, marker) for name, marker, _ in bad}
    result = audit(s3, sc.settings, ids, records=recs)
    report(
        "poison_stream",
        result,
        bad_items=len(bad),
        dead_lettered={k: v for k, v in counts.items()},
        dead_letter_entries=len(entries),
        worker_exit_code=worker.proc.poll(),
        batch_s=time.time() - started,
    )
    assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_text()[-3000:]}"
    assert_clean(result)
    assert counts == {name: 1 for name, _, _ in bad}
    assert len(entries) == len(bad)
