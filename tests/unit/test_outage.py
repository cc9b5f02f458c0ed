"""Outage handling without the outage's services: budgets, masking, persistence, recovery."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
import redis
from botocore.exceptions import EndpointConnectionError

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.broker import (
    BrokerUnavailable,
    masked_url,
    persistence_problem,
    ride_out,
    warn_if_not_persistent,
)
from lcm_fleet.contract import parse_job
from lcm_fleet.errors import TransientStorageError
from lcm_fleet.keys import image_key, result_key
from lcm_fleet.settings import ConnectionSettings
from lcm_fleet.storage import ObjectStore
from tests.results import make_stored_result
from worker.results.recovery import remove_partial, stored_result


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_a_time_budget_outlasts_an_outage_that_attempts_would_not():
    clock, calls = Clock(), []

    def down_for_30s():
        calls.append(clock.now)
        if clock.now < 30:
            raise ConnectionError("down")
        return "ok"

    out = call_with_backoff(
        down_for_30s,
        transient=(ConnectionError,),
        backoff=Backoff(0.5, 8.0, attempts=4),
        what="t",
        sleep=clock.sleep,
        clock=clock,
        budget_s=300,
    )
    assert out == "ok" and len(calls) > 4  # more calls than LCM_UPLOAD_ATTEMPTS
    assert max(b - a for a, b in itertools.pairwise(calls)) <= 8.0  # capped waits


def test_a_time_budget_ends_and_the_last_error_propagates():
    clock = Clock()

    def down():
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call_with_backoff(
            down,
            transient=(ConnectionError,),
            backoff=Backoff(0.5, 8.0),
            what="t",
            sleep=clock.sleep,
            clock=clock,
            budget_s=60,
        )
    assert 60 <= clock.now <= 60.001  # the last wait is cut to what was left


def test_give_up_ends_the_retries_at_once():
    stop, calls = threading.Event(), []

    def down():
        calls.append(1)
        stop.set()
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call_with_backoff(
            down,
            transient=(ConnectionError,),
            backoff=Backoff(1, 2),
            what="t",
            budget_s=300,
            give_up=stop.is_set,
        )
    assert calls == [1]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6380/2", "redis://:***@host:6380/2"),
        ("rediss://user:s3cret@host/0", "rediss://user:***@host/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_masked_url_hides_the_password(url, shown):
    assert masked_url(url) == shown


class ConfigRedis:
    def __init__(self, config=None, refuse=False):
        self.config, self.refuse = config or {}, refuse
        self.keys: dict[str, str] = {}

    def set(self, key, value, nx=False, ex=None):
        if nx and key in self.keys:
            return None
        self.keys[key] = value
        return True

    def config_get(self, name):
        if self.refuse:
            raise redis.exceptions.ResponseError("unknown command 'CONFIG'")
        return {name: self.config.get(name, "")}


def test_persistence_problem_reads_appendonly_and_save():
    assert persistence_problem(ConfigRedis({"appendonly": "yes"})) is None
    assert "no persistence" in persistence_problem(ConfigRedis({"appendonly": "no"}))
    snapshots = persistence_problem(ConfigRedis({"appendonly": "no", "save": "3600 1"}))
    assert "has no AOF" in snapshots and "3600 1" in snapshots
    assert persistence_problem(ConfigRedis(refuse=True)) is None  # CONFIG disabled: no warning


def test_the_warning_masks_the_password(caplog):
    url = "redis://:hunter2@127.0.0.1:1/0"
    message = warn_if_not_persistent(
        ConnectionSettings(redis_url=url), "lcm-worker", client=ConfigRedis({"appendonly": "no"})
    )
    assert message and "hunter2" not in message and ":***@" in message
    assert "hunter2" not in caplog.text and "appendfsync everysec" in caplog.text
    # Redis down: nothing to say here (the caller's own checks report it).
    assert (
        warn_if_not_persistent(ConnectionSettings(redis_url="redis://127.0.0.1:1/0"), "lcm") is None
    )


def test_a_quiet_period_says_the_warning_once_per_role(caplog):
    settings, client = ConnectionSettings(), ConfigRedis({"appendonly": "no"})
    assert warn_if_not_persistent(settings, "lcm", client=client, quiet_for_s=3600)
    assert warn_if_not_persistent(settings, "lcm", client=client, quiet_for_s=3600) is None
    assert warn_if_not_persistent(settings, "lcm-api", client=client, quiet_for_s=3600)
    assert warn_if_not_persistent(settings, "lcm", client=client)  # no quiet period: always
    assert caplog.text.count("lcm: the broker") == 2


def test_ride_out_gives_up_in_one_line_without_the_password():
    def down():
        raise redis.exceptions.ConnectionError("Error 111 connecting")

    with pytest.raises(BrokerUnavailable) as caught:
        ride_out(down, url="redis://:pw@127.0.0.1:1/0", what="t", budget_s=0.3)
    text = str(caught.value)
    assert "\n" not in text and "pw@" not in text and "redis://:***@127.0.0.1:1/0" in text


def test_lcm_status_with_redis_down_prints_one_line_and_exits_1(monkeypatch, capsys):
    from producer import cli, watch

    monkeypatch.setattr(watch, "STATUS_BUDGET_S", 0.5)
    monkeypatch.setenv("LCM_REDIS_URL", "redis://:topsecret@127.0.0.1:1/0")
    assert cli.main(["status", "some-job"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if ln.startswith("lcm: ")] == [err[-1]]
    assert "Redis at redis://:***@127.0.0.1:1/0 did not answer" in err[-1]
    assert not any("Traceback" in ln or "topsecret" in ln for ln in err)


# ---------------------------------------------------------------- stored results, partials


class MemS3:
    """Enough of boto3's S3 client for ObjectStore.get/head/put/delete."""

    def __init__(self, fail_deletes=False):
        self.objects: dict[str, bytes] = {}
        self.fail_deletes = fail_deletes
        self.meta = type("M", (), {"endpoint_url": "http://mem"})()

    def _missing(self):
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": "404"}}, "GetObject")

    def get_object(self, Bucket, Key):
        if Key not in self.objects:
            raise self._missing()
        import io

        return {"Body": io.BytesIO(self.objects[Key])}

    def head_object(self, Bucket, Key):
        if Key not in self.objects:
            raise self._missing()
        return {"ContentLength": len(self.objects[Key])}

    def delete_object(self, Bucket, Key):
        if self.fail_deletes:
            raise EndpointConnectionError(endpoint_url="http://mem")
        self.objects.pop(Key, None)


def _store(client):
    return ObjectStore(client, "b", Backoff(0.001, 0.002, attempts=2))


def _stored_job(client, job, model="m" * 64):
    def put(key, data):
        client.objects[key] = data
        return f"s3://b/{key}"

    result = make_stored_result(
        job,
        put,
        data=lambda i: f"png {i}".encode(),
        guidance_scale=1.0,
        model_manifest_sha256=model,
        durations_s={},
    )
    client.objects[result_key("", job.job_id)] = json.dumps(result.model_dump(mode="json")).encode()
    return result


def test_a_stored_result_that_verifies_is_reused():
    client = MemS3()
    job = parse_job({"prompt": "p", "seed": 3, "num_images": 2, "width": 64, "height": 64})
    result = _stored_job(client, job)
    assert stored_result(_store(client), "", job, "m" * 64, (64, 64)) == result


@pytest.mark.parametrize("damage", ["image", "model", "missing", "prompt"])
def test_a_stored_result_that_does_not_verify_is_rendered_again(damage):
    client = MemS3()
    job = parse_job({"prompt": "p", "seed": 3, "num_images": 2, "width": 64, "height": 64})
    _stored_job(client, job)
    model = "m" * 64
    if damage == "image":
        client.objects[image_key("", job.job_id, 1)] = b"flipped"
    elif damage == "missing":
        del client.objects[image_key("", job.job_id, 0)]
    elif damage == "model":
        model = "n" * 64
    else:
        job = job.model_copy(update={"prompt": "another"})
    assert stored_result(_store(client), "", job, model, (64, 64)) is None


def test_partial_images_are_removed_or_listed():
    client = MemS3()
    keys = [image_key("", "j1", 0), image_key("", "j1", 1)]
    for key in keys:
        client.objects[key] = b"x"
    assert remove_partial(_store(client), "", "j1", keys) == []
    assert client.objects == {}
    failing = MemS3(fail_deletes=True)
    for key in keys:
        failing.objects[key] = b"x"
    assert remove_partial(_store(failing), "", "j1", keys) == keys


def test_partial_images_stay_when_another_delivery_succeeded():
    client = MemS3()
    job = parse_job({"prompt": "p", "seed": 3, "num_images": 1, "width": 64, "height": 64})
    _stored_job(client, job)
    keys = [image_key("", job.job_id, 0)]
    assert remove_partial(_store(client), "", job.job_id, keys) == []
    assert keys[0] in client.objects


def test_an_abandoned_upload_stops_retrying():
    stop = threading.Event()
    stop.set()
    fails = [0]

    class Down(MemS3):
        def put_object(self, **kw):
            fails[0] += 1
            raise EndpointConnectionError(endpoint_url="http://mem")

    store = ObjectStore(Down(), "b", Backoff(0.5, 1.0), budget_s=300)
    with pytest.raises(TransientStorageError):
        store.put("k", b"d", "image/png", stop=stop)
    assert fails == [1]


def test_messages_whose_end_redis_missed_are_given_back_on_the_next_beat():
    from worker.consumer import reclaim

    class Held:
        def __init__(self):
            self.released = []

        def release(self, tag):
            self.released.append(tag)

    held = Held()
    reclaim._missed.update({"t2", "t1"})
    restored: list[str] = []
    assert reclaim.settle_missed(held, restored.extend) == ["t1", "t2"]
    assert restored == ["t1", "t2"] and held.released == ["t1", "t2"] and not reclaim._missed

    def down(tags):
        raise ConnectionError("still away")

    reclaim._missed.add("t3")
    try:
        with pytest.raises(ConnectionError):
            reclaim.settle_missed(held, down)
        assert reclaim._missed == {"t3"}  # kept for the beat after
    finally:
        reclaim._missed.clear()
