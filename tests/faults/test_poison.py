"""The poison stream: malformed queue items between good jobs. Every good job succeeds,
every bad item is dead-lettered exactly once (an lcm_fleet.dead_letter entry whose sha256 is
the item's, with at most RAW_PREFIX_BYTES of it), the worker never exits."""

from __future__ import annotations

import base64
import collections
import copy
import hashlib
import itertools
import json
import time
import uuid
from typing import Any

import redis

from lcm_fleet.contract import TASK_RENDER, queue_for
from lcm_fleet.dead_letter import RAW_PREFIX_BYTES, DeadLetter, DeadLetterKind, DeadLetters
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


def _bad_items(template: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(name, raw item), each item distinct (its dead-letter entry is found by sha256)."""
    items: list[tuple[str, bytes]] = []

    def envelope(name: str, change: Any) -> None:
        marker = f"poison-{name}-{uuid.uuid4().hex[:8]}"
        env = copy.deepcopy(template)
        env["headers"]["id"] = marker
        env["properties"]["correlation_id"] = marker
        change(env, marker)
        items.append((name, json.dumps({"lcm_faults_marker": marker, **env}).encode()))

    for raw in ("[1,2,3]", "[]"):
        items.append((f"json_array {raw}", raw.encode()))
    strings = f"poison-strings-{uuid.uuid4().hex[:8]}"
    items.append(("json_array_of_strings", json.dumps([strings, "b", "c"]).encode()))
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


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def test_poison_items_between_good_jobs(scenario, s3):
    sc = scenario()
    r = redis.Redis.from_url(sc.settings.redis_url)
    worker = sc.start_worker("worker.log", sc.env(LCM_SIZES="512x512"))
    bad = _bad_items(_template(sc.settings, r))
    assert len({_sha(raw) for _, raw in bad}) == len(bad)
    good = []
    for i, (_, raw) in enumerate(bad):
        good.append(submit(f"good {i}", settings=sc.settings, seed=i, **JOB))
        job = good[-1].job
        assert job is not None
        r.lpush(queue_for(job, sc.settings.queue), raw)  # the good jobs' own queue
    good.append(submit("good last", settings=sc.settings, seed=99, **JOB))
    started = time.time()
    ids = [h.job_id for h in good]
    recs = wait_finished(sc.settings, ids, JOB_SLACK_S, workers=[worker])
    letters = DeadLetters(r)
    want = {_sha(raw) for _, raw in bad}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        entries = letters.entries()
        if want <= {e.sha256 for e in entries} or worker.proc.poll() is not None:
            break
        time.sleep(0.2)
    raw_entries = r.llen(DEAD_LETTER_KEY)
    by_sha: dict[str, list[DeadLetter]] = collections.defaultdict(list)
    for entry in entries:
        by_sha[entry.sha256].append(entry)
    counts = {name: len(by_sha[_sha(raw)]) for name, raw in bad}
    kinds = {name: [e.kind.value for e in by_sha[_sha(raw)]] for name, raw in bad}
    result = audit(s3, sc.settings, ids, records=recs)
    # Recovery: the longest time between the good jobs on either side of a bad item
    # finishing (one render plus getting past the item).
    ends = [result.finished_at.get(h.job_id) for h in good]
    gaps = [b - a for a, b in itertools.pairwise(ends) if a is not None and b is not None]
    report(
        "poison_stream",
        result,
        recovery_s=max(gaps) if len(gaps) == len(bad) else None,
        bad_items=len(bad),
        dead_lettered=counts,
        kinds=kinds,
        dead_letter_entries=raw_entries,
        worker_exit_code=worker.proc.poll(),
        batch_s=time.time() - started,
    )
    assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_text()[-3000:]}"
    assert_clean(result)
    assert counts == {name: 1 for name, _ in bad}
    assert raw_entries == len(entries) == len(bad)  # every entry parses, nothing else is there
    for name, raw in bad:
        (entry,) = by_sha[_sha(raw)]
        assert entry.size == len(raw), name
        assert raw.startswith(entry.prefix.encode()), name
        assert len(entry.prefix.encode()) <= RAW_PREFIX_BYTES, name
        assert entry.reason, name
    (huge,) = by_sha[_sha(dict(bad)["huge_body"])]
    assert huge.kind is DeadLetterKind.TOO_LARGE and huge.size > HUGE_BYTES
