"""What the fleet serves: adverts, the producer's check and cache, the worker's warnings."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lcm_fleet.contract import Job, parse_job
from lcm_fleet.keys import ADVERTS_KEY, QUEUES_KEY, advert_key
from lcm_fleet.served import (
    Advert,
    ServedReader,
    ServedSet,
    ServedSizeCheck,
    UnservedSize,
    family_of,
    read_adverts,
    require_served,
)
from worker.consumer.advert import Advertiser
from worker.metrics import QueueDepthCollector


class FakeRedis:
    """The string, set and list commands the adverts use; counts round trips."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.sets: dict[str, set[str]] = {}
        self.lists: dict[str, int] = {}
        self.calls = 0
        self.down = False

    def _call(self) -> None:
        if self.down:
            raise ConnectionError("redis is down")
        self.calls += 1

    def pipeline(self, transaction: bool = True) -> FakePipe:
        return FakePipe(self)

    def set(self, key: str, value: str, px: int | None = None) -> None:
        self._call()
        self.values[key] = value.encode()

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self._call()
        return [self.values.get(k) for k in keys]

    def delete(self, key: str) -> None:
        self._call()
        self.values.pop(key, None)

    def sadd(self, key: str, *members: str) -> None:
        self._call()
        self.sets.setdefault(key, set()).update(members)

    def srem(self, key: str, *members: str) -> None:
        self._call()
        self.sets.get(key, set()).difference_update(members)

    def smembers(self, key: str) -> set[bytes]:
        self._call()
        return {m.encode() for m in self.sets.get(key, set())}

    def llen(self, key: str) -> int:
        self._call()
        return self.lists.get(key, 0)


class FakePipe:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.ops = redis, []

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: self.ops.append((name, a, kw))

    def execute(self) -> list[Any]:
        out = [getattr(self.redis, name)(*a, **kw) for name, a, kw in self.ops]
        self.redis.calls -= max(0, len(self.ops) - 1)  # one round trip
        return out


def advert(
    incarnation: str = "i1", base: str = "lcm.render", sizes: tuple[str, ...] = ("64x64",)
) -> Advert:
    return Advert(
        worker=f"lcm-worker-0@{incarnation}",
        incarnation=incarnation,
        queue=base,
        queues=(base, *(f"{base}.{s}" for s in sizes)),
        sizes=sizes,
        model="reference@latest",
        model_manifest_sha256="0" * 64,
        at=0.0,
    )


def job(**fields: Any) -> Job:
    return parse_job({"prompt": "a cat", **fields})


def sized(width: int, height: int) -> Job:
    return job(width=width, height=height)


SERVED = ServedSet((advert("a", sizes=("64x64",)), advert("b", sizes=("64x64", "128x96"))))


def test_family_of_strips_the_size_class():
    assert family_of("lcm.render.512x768") == "lcm.render"
    assert family_of("lcm.render") == "lcm.render"
    assert family_of("custom.queue") == "custom.queue"


def test_a_bulk_queue_is_served_when_its_interactive_queue_is():
    """Adverts may list the bulk queues or not (older workers): either way a bulk job of a
    served size passes, and one of a size nobody serves is refused as its interactive twin."""
    assert family_of("lcm.render.512x768.bulk") == "lcm.render"
    assert family_of("lcm.render.bulk") == "lcm.render"
    with_bulk = advert("c", sizes=("64x64",))
    with_bulk = with_bulk.model_copy(
        update={"queues": (*with_bulk.queues, *(f"{q}.bulk" for q in with_bulk.queues))}
    )
    for served in (SERVED, ServedSet((with_bulk,))):
        require_served(
            served,
            ServedSizeCheck.STRICT,
            [(sized(64, 64), "lcm.render.64x64.bulk"), (job(), "lcm.render.bulk")],
        )
        with pytest.raises(UnservedSize) as info:
            require_served(served, ServedSizeCheck.AUTO, [(sized(96, 96), "lcm.render.96x96.bulk")])
        assert "64x64" in info.value.served and info.value.queue.endswith(".bulk")
    assert ServedSet((advert("d", base="other"),)).consumers("lcm.render.bulk") == []


def test_a_size_nobody_serves_is_refused_naming_the_sizes_served():
    with pytest.raises(UnservedSize) as info:
        require_served(SERVED, ServedSizeCheck.AUTO, [(sized(128, 128), "lcm.render.128x128")])
    error = info.value
    message = str(error)
    assert "field 'width'/'height' got 128x128" in message
    assert "serve 64x64, 128x96" in message and "LCM_SERVED_SIZE_CHECK=off" in message
    assert (error.field, error.value, error.served) == ("width", "128x128", ["64x64", "128x96"])
    assert "one of 64x64, 128x96" in error.allowed


def test_served_sizes_and_unsized_jobs_pass():
    targets = [
        (sized(64, 64), "lcm.render.64x64"),
        (sized(128, 96), "lcm.render.128x96"),
        (job(), "lcm.render"),
    ]
    require_served(SERVED, ServedSizeCheck.STRICT, targets)


def test_the_first_refused_job_is_named_by_its_position():
    targets = [(sized(64, 64), "lcm.render.64x64"), (sized(256, 256), "lcm.render.256x256")]
    with pytest.raises(UnservedSize) as info:
        require_served(SERVED, ServedSizeCheck.AUTO, targets)
    assert info.value.index == 1


def test_another_family_does_not_serve_this_one(caplog):
    caplog.set_level(logging.WARNING, "lcm_fleet.served")
    # Workers serve lcm.render; a job for lcm.other with no worker there: auto queues it
    # (the fleet of lcm.other may be starting) and says so once; strict refuses it.
    other = [(sized(64, 64), "lcm.other.64x64")]
    require_served(SERVED, ServedSizeCheck.AUTO, other)
    require_served(SERVED, ServedSizeCheck.AUTO, other)
    warnings = [r for r in caplog.records if "no worker advertises on queue lcm.other" in r.message]
    assert len(warnings) == 1
    with pytest.raises(UnservedSize, match=r"no worker consumes queue lcm\.other\.64x64") as info:
        require_served(SERVED, ServedSizeCheck.STRICT, other)
    assert info.value.served == [] and "none runs" in info.value.allowed


def test_off_and_unknown_refuse_nothing():
    targets = [(sized(256, 256), "lcm.render.256x256")]
    require_served(SERVED, ServedSizeCheck.OFF, targets)
    require_served(None, ServedSizeCheck.STRICT, targets)  # adverts unreadable


def test_an_explicit_queue_is_checked_as_it_is():
    # `lcm submit --queue lcm.render.128x96` with a job of no size: a worker consumes it.
    require_served(SERVED, ServedSizeCheck.STRICT, [(job(), "lcm.render.128x96")])
    with pytest.raises(UnservedSize, match=r"queue 'lcm\.render\.99x99'") as info:
        require_served(SERVED, ServedSizeCheck.AUTO, [(job(), "lcm.render.99x99")])
    assert info.value.field == "queue"


def test_the_reader_reads_adverts_and_skips_expired_and_malformed_ones():
    redis = FakeRedis()
    redis.sadd(ADVERTS_KEY, "a", "gone", "bad")
    redis.set(advert_key("a"), advert("a").model_dump_json())
    redis.set(advert_key("bad"), '{"worker": 1}')
    served, expired = read_adverts(redis)
    assert [a.incarnation for a in served.adverts] == ["a"] and expired == ["gone"]


def test_the_reader_caches_then_reads_again_and_survives_an_outage():
    redis, now = FakeRedis(), [0.0]
    redis.sadd(ADVERTS_KEY, "a")
    redis.set(advert_key("a"), advert("a").model_dump_json())
    reader = ServedReader(redis, cache_s=1.5, clock=lambda: now[0])
    redis.calls = 0
    first = reader.read()
    assert first is not None and first.sizes("lcm.render") == ["64x64"]
    assert redis.calls == 2  # SMEMBERS, MGET
    for _ in range(100):
        now[0] += 0.01
        assert reader.read() is first
    assert redis.calls == 2  # steady state: no round trip per submit
    now[0] += 1.5
    redis.set(advert_key("a"), advert("a", sizes=("128x128",)).model_dump_json())
    again = reader.read()
    assert again is not None and again.sizes("lcm.render") == ["128x128"]
    redis.down = True
    now[0] += 2
    assert reader.read() is again  # the last set read


def test_the_reader_notes_each_queue_once():
    redis = FakeRedis()
    reader = ServedReader(redis)
    for _ in range(3):
        reader.note_queue("lcm.render.128x128")
    assert redis.sets[QUEUES_KEY] == {"lcm.render.128x128"}
    assert redis.calls == 1


def test_a_worker_advertises_on_each_beat_and_withdraws_at_stop():
    redis = FakeRedis()
    mine = Advertiser(redis, advert("me", sizes=("64x64",)), ttl_s=30)
    mine.beat()
    served, _ = read_adverts(redis)
    assert served.queues() == {"lcm.render", "lcm.render.64x64"}
    assert served.adverts[0].at > 0
    mine.close()
    assert read_adverts(redis)[0].adverts == ()


def test_a_queue_with_jobs_and_no_consumer_is_warned_about_now_and_then(caplog):
    caplog.set_level(logging.WARNING, "worker.consumer.advert")
    redis, now = FakeRedis(), [0.0]
    redis.sadd(ADVERTS_KEY, "dead")  # its advert expired
    redis.sadd(QUEUES_KEY, "lcm.render.128x128", "lcm.render.256x256", "lcm.render.64x64")
    redis.lists.update({"lcm.render.128x128": 3, "lcm.render.64x64": 5})
    mine = Advertiser(redis, advert("me"), ttl_s=30, warn_every_s=300, clock=lambda: now[0])
    mine.beat()
    assert redis.sets[ADVERTS_KEY] == {"me"}  # the expired one is pruned
    lines = [r.message for r in caplog.records]
    # 64x64 is consumed (by this worker); 256x256 is empty; 128x128 holds jobs, nobody serves it
    assert lines == [
        "queue lcm.render.128x128 holds 3 job(s) and no worker advertises consuming it "
        "(workers on lcm.render serve 64x64); start a worker serving it, or cancel the jobs"
    ]
    now[0] += 10
    mine.beat()
    assert len(caplog.records) == 1
    now[0] += 300
    assert mine.check_queues() == ["lcm.render.128x128"]
    assert len(caplog.records) == 2


def test_queue_depth_covers_every_lcm_queue_consumed_or_not():
    redis = FakeRedis()
    Advertiser(redis, advert("me"), ttl_s=30).beat()
    redis.sadd(QUEUES_KEY, "lcm.render.128x128")
    redis.lists.update({"lcm.render.128x128": 4, "lcm.render": 1})
    collector = QueueDepthCollector("redis://unused", ["lcm.render", "lcm.render.64x64"])
    collector._client = redis
    families = {
        f.name: {s.labels["queue"]: s.value for s in f.samples} for f in collector.collect()
    }
    assert families["lcm_queue_depth"] == {
        "lcm.render": 1.0,
        "lcm.render.64x64": 0.0,
        "lcm.render.128x128": 4.0,
        "lcm.webhooks": 0.0,
    }
    assert families["lcm_queue_consumers"] == {
        "lcm.render": 1.0,
        "lcm.render.64x64": 1.0,
        "lcm.render.128x128": 0.0,
    }


def test_the_http_api_answers_400_naming_the_field_and_the_sizes_served():
    from producer.http.submitting import unserved_error

    with pytest.raises(UnservedSize) as info:
        require_served(SERVED, ServedSizeCheck.AUTO, [(sized(128, 128), "lcm.render.128x128")])
    for field, param in ((None, "width"), ("size", "size"), ("jobs[2].width", "jobs[2].width")):
        body = unserved_error(info.value, field).body().error
        assert (body.param, body.code, body.value) == (param, "unserved_size", "128x128")
        assert body.type == "invalid_request_error" and "64x64, 128x96" in (body.allowed or "")


def test_a_known_queue_empty_and_unconsumed_for_the_prune_age_is_forgotten():
    redis, now = FakeRedis(), [0.0]
    redis.sadd(QUEUES_KEY, "lcm.render.128x128", "lcm.render.256x256", "lcm.render.64x64")
    redis.lists.update({"lcm.render.256x256": 2})
    mine = Advertiser(redis, advert("me"), ttl_s=30, prune_after_s=100, clock=lambda: now[0])
    mine.beat()
    now[0] += 99
    mine.beat()
    assert redis.sets[QUEUES_KEY] == {
        "lcm.render.128x128",
        "lcm.render.256x256",
        "lcm.render.64x64",
    }
    now[0] += 1
    mine.beat()
    # 128x128: empty and unconsumed for 100 s; 256x256 holds jobs; 64x64 is consumed (by me).
    assert redis.sets[QUEUES_KEY] == {"lcm.render.256x256", "lcm.render.64x64"}
    # Jobs in a queue start its idle time again.
    redis.lists["lcm.render.256x256"] = 0
    mine.beat()
    now[0] += 60
    redis.lists["lcm.render.256x256"] = 1
    mine.beat()
    redis.lists["lcm.render.256x256"] = 0
    now[0] += 60
    mine.beat()
    assert "lcm.render.256x256" in redis.sets[QUEUES_KEY]
    never = Advertiser(redis, advert("me"), ttl_s=30, prune_after_s=0, clock=lambda: now[0])
    now[0] += 10_000
    never.beat()
    never.beat()
    assert "lcm.render.256x256" in redis.sets[QUEUES_KEY]
