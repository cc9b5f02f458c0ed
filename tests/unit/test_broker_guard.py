"""The screen of queue items, and the guards, on the real kombu and Celery code.

The property that matters: what the screen passes, kombu's Message, the Redis QoS bookkeeping
and Celery's request (the steps that stop a worker when they raise) all take without raising;
what is bad by construction (tests/poison.py), the screen refuses, naming why.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from celery import Celery
from celery.worker.request import Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.transport.virtual import Message
from kombu.utils.json import dumps, loads

from lcm_fleet.consuming import broker_guard
from lcm_fleet.consuming.screen import ScreenPolicy, screen
from lcm_fleet.contract import TASK_RENDER, WIRE_CONFIG
from lcm_fleet.dead_letter import RAW_PREFIX_BYTES, DeadLetterKind, DeadLetters, make_entry
from tests import poison

QUEUE = "lcm.test.q"
POLICY = ScreenPolicy(
    max_message_bytes=poison.MAX_MESSAGE_BYTES, tasks={TASK_RENDER}, max_eta_ahead_s=600.0
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def guard_app() -> Celery:
    app = Celery("guard-test", broker="memory://", set_as_current=False)
    app.conf.update(WIRE_CONFIG)
    return app


def _task(app: Celery) -> Any:
    class Render(app.Task):  # type: ignore[name-defined,misc]  # never registered or run
        name = TASK_RENDER

    return Render()


def take(raw: bytes, app: Celery) -> None:
    """What kombu and Celery do with a popped item, up to handing it to the pool; raises
    where a worker would stop."""
    payload = loads(raw.decode())
    with Connection("memory://") as conn:
        channel = conn.default_channel
        message = Message(payload, channel=channel)
        # kombu's Redis QoS.append: the exchange and routing key, the tag as a Redis field
        info = message.delivery_info
        info["exchange"], info["routing_key"]
        assert isinstance(message.delivery_tag, str)
        dumps([message._raw, info["exchange"], info["routing_key"]])
        message.accept = {"application/json"}
        assert message.headers["task"] == TASK_RENDER
        task = _task(app)
        request = Request(
            message,
            app=app,
            task=task,
            body=message.body,
            headers=message.headers,
            decoded=False,
            utc=True,
        )
        _soft, _hard = request.time_limits  # Request.execute_using_pool
        request.eta  # noqa: B018
        request.expires  # noqa: B018
        _args, _kwargs, embed = loads(message.body)
        dict(**(embed or {}))


def test_a_producers_message_passes(guard_app: Celery) -> None:
    raw = poison.encode(poison.envelope([{"prompt": "a cat"}], QUEUE, lcm_submitted_at=1.5))
    assert screen(raw, POLICY) is None
    take(raw, guard_app)


def test_a_real_celery_producers_envelope_passes(guard_app: Celery) -> None:
    guard_app.send_task(TASK_RENDER, args=[{"prompt": "a cat"}], queue=QUEUE, countdown=30)
    with guard_app.connection_for_write() as conn:
        raw = dumps(conn.default_channel._get(QUEUE)).encode()
    assert screen(raw, POLICY) is None  # Celery's own retry: an ETA 30 s ahead
    take(raw, guard_app)


@pytest.mark.parametrize(
    ("mutate", "kind", "words"),
    [
        (lambda e: [1, 2, 3], DeadLetterKind.BAD_ENVELOPE, "JSON list"),
        (lambda e: [], DeadLetterKind.BAD_ENVELOPE, "JSON list"),
        (lambda e: ["a", "b", "c"], DeadLetterKind.BAD_ENVELOPE, "JSON list"),
        (lambda e: {**e, "body": "not base64!"}, DeadLetterKind.BAD_BODY, "not valid base64"),
        (
            lambda e: {**e, "properties": {**e["properties"], "body_encoding": "rot13"}},
            DeadLetterKind.BAD_ENVELOPE,
            "body_encoding is 'rot13'",
        ),
        (
            lambda e: {**e, "properties": {**e["properties"], "delivery_tag": {"a": 1}}},
            DeadLetterKind.BAD_ENVELOPE,
            "delivery_tag is {'a': 1} (dict)",
        ),
        (
            lambda e: {**e, "headers": {**e["headers"], "timelimit": "x"}},
            DeadLetterKind.BAD_HEADERS,
            "headers.timelimit is 'x'",
        ),
        (
            lambda e: {**e, "body": poison._body({"args": []})},
            DeadLetterKind.BAD_BODY,
            "[args, kwargs, embed]",
        ),
        (
            lambda e: {**e, "headers": {**e["headers"], "task": ["a"]}},
            DeadLetterKind.UNKNOWN_TASK,
            "headers.task is ['a']",
        ),
    ],
)
def test_the_reported_poison_items_are_refused_with_their_reason(
    mutate: Any, kind: DeadLetterKind, words: str, guard_app: Celery
) -> None:
    raw = poison.encode(mutate(poison.envelope([{"prompt": "p"}], QUEUE)))
    refusal = screen(raw, POLICY)
    assert refusal is not None and refusal.kind is kind, refusal
    assert words in refusal.reason
    with pytest.raises(Exception):  # noqa: B017 - each of them breaks kombu or Celery unscreened
        take(raw, guard_app)


def test_an_item_over_the_size_limit_is_refused_before_it_is_decoded() -> None:
    raw = b"{" * (POLICY.max_message_bytes + 1)  # would be a RecursionError if decoded
    refusal = screen(raw, POLICY)
    assert refusal is not None and refusal.kind is DeadLetterKind.TOO_LARGE
    assert f"{len(raw)} bytes, over LCM_MAX_MESSAGE_BYTES" in refusal.reason


def test_reason_quotes_only_a_prefix_of_a_bad_value() -> None:
    env = poison.envelope([{"prompt": "p"}], QUEUE)
    env["headers"]["timelimit"] = "y" * 5000
    refusal = screen(poison.encode(env), POLICY)
    assert refusal is not None and len(refusal.reason) < 200


@FAST
@given(poison.bad_items(QUEUE))
def test_every_bad_item_is_refused(raw: bytes) -> None:
    refusal = screen(raw, POLICY)
    assert refusal is not None
    assert len(refusal.reason) <= 600


@FAST
@given(raw=poison.good_items(QUEUE))
def test_every_good_envelope_passes_and_celery_takes_it(raw: bytes, guard_app: Celery) -> None:
    assert screen(raw, POLICY) is None
    take(raw, guard_app)


@FAST
@given(raw=st.one_of(poison.bad_items(QUEUE), poison.good_items(QUEUE), st.binary(max_size=300)))
def test_whatever_the_screen_passes_kombu_and_celery_take(raw: bytes, guard_app: Celery) -> None:
    if screen(raw, POLICY) is None:
        take(raw, guard_app)


def test_dead_letter_entry_keeps_only_a_prefix() -> None:
    raw = b"x" * 10_000_000
    entry = make_entry(raw, DeadLetterKind.TOO_LARGE, "r" * 10_000, queue="q")
    assert entry.size == 10_000_000 and len(entry.prefix) == RAW_PREFIX_BYTES
    assert len(entry.model_dump_json()) < 2000


class FakeRedis:
    def __init__(self) -> None:
        self.lists: dict[str, list[str]] = {}

    def pipeline(self) -> FakeRedis:
        self.ops: list[Any] = []
        return self

    def lpush(self, key: str, value: str) -> None:
        self.ops.append(lambda: self.lists.setdefault(key, []).insert(0, value))

    def ltrim(self, key: str, start: int, end: int) -> None:
        self.ops.append(lambda: self.lists.__setitem__(key, self.lists[key][start : end + 1]))

    def llen(self, key: str) -> None:
        self.ops.append(lambda: len(self.lists.get(key, [])))

    def delete(self, key: str) -> None:
        self.ops.append(lambda: self.lists.pop(key, None))

    def execute(self) -> list[Any]:
        return [op() for op in self.ops]


def test_the_sink_writes_once_and_the_list_stays_bounded() -> None:
    redis = FakeRedis()
    sink = broker_guard.DeadLetterSink(lambda: redis, max_entries=5, worker="w")
    refusal = screen(b"[]", POLICY)
    assert refusal is not None
    for i in range(8):
        sink(f"[{i}]".encode(), refusal, QUEUE)
    entries = [json.loads(e) for e in redis.lists["lcm-fleet:dead-letter"]]
    assert [e["prefix"] for e in entries] == ["[7]", "[6]", "[5]", "[4]", "[3]"]
    assert all(e["kind"] == "bad_envelope" and e["worker"] == "w" for e in entries)
    assert DeadLetters(redis).purge() == 5


def test_brpop_screen_turns_a_refused_reply_into_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[Any, Any, Any]] = []
    channel = broker_guard.Channel.__new__(broker_guard.Channel)
    channel._sink = lambda raw, refusal, queue: written.append((raw, refusal, queue))  # type: ignore[assignment]
    callback = channel._screened("BRPOP", lambda r, **o: (r and tuple(r)) or None, POLICY)
    good = poison.encode(poison.envelope([{"prompt": "p"}], QUEUE))
    assert callback([QUEUE.encode(), good]) == (QUEUE.encode(), good)
    assert callback([QUEUE.encode(), b"[1,2,3]"]) is None
    assert callback(None) is None
    assert [(raw, queue) for raw, _, queue in written] == [(b"[1,2,3]", QUEUE)]


def test_worker_exit_code_is_celerys(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import cli

    class FakeWorker:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs, self.exitcode = kwargs, None

        def start(self) -> None:
            self.exitcode = 1  # what WorkController.start sets after "Unrecoverable error"

    class Stops:
        def stop(self) -> None:
            self.stopped = True

    class FakeApp:
        Worker = FakeWorker

    class Rt:
        settings = type("S", (), {"log_level": "INFO"})()
        threads, queues = 2, ("q",)

        def stop(self) -> None:
            pass

    consumer = cli.Consumer("w@h", Stops())  # type: ignore[arg-type]
    assert cli.run_celery(FakeApp(), Rt(), consumer) == 1  # type: ignore[arg-type]


def test_events_are_on_in_the_workers_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.consumer.app import configure
    from worker.settings import WorkerSettings

    monkeypatch.setenv("LCM_MODEL_DIR", "/nonexistent")
    monkeypatch.setenv("LCM_S3_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("LCM_S3_SECRET_ACCESS_KEY", "s")
    app = configure(WorkerSettings(), "w@h")  # type: ignore[call-arg]
    assert app.conf.worker_send_task_events and app.conf.task_send_sent_event
    assert app.conf.broker_transport == "lcm_fleet.consuming.broker_guard:Transport"
    assert app.conf.worker_consumer == "lcm_fleet.consuming.broker_guard:GuardedConsumer"
    with app.connection_for_write() as conn:
        assert conn.transport_cls is broker_guard.Transport or isinstance(
            conn.transport, broker_guard.Transport
        )


def test_wait_for_broker_gives_up_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from worker import cli
    from worker.settings import WorkerSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LCM_MODEL_DIR", "/nonexistent")
    monkeypatch.setenv("LCM_S3_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("LCM_S3_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("LCM_REDIS_URL", f"redis://:pw@127.0.0.1:{port}/0")
    monkeypatch.setenv("LCM_BROKER_CONNECT_TIMEOUT_S", "0.5")
    with pytest.raises(cli.BrokerUnreachable, match=r"redis://:\*\*\*@127.0.0.1:\d+/0 within 0.5s"):
        cli.wait_for_broker(WorkerSettings())  # type: ignore[call-arg]


def test_guarded_consumer_dead_letters_what_celery_raises() -> None:
    written: list[Any] = []

    class Msg:
        acknowledged = False
        delivery_info: ClassVar[dict[str, str]] = {"routing_key": QUEUE}
        _raw: ClassVar[dict[str, Any]] = {"headers": {"task": ["x"]}}

        def reject(self, requeue: bool = False) -> None:
            self.acknowledged = True

    consumer = broker_guard.GuardedConsumer.__new__(broker_guard.GuardedConsumer)
    consumer.connection_errors = (ConnectionError,)  # type: ignore[misc]
    consumer._lcm_sink = lambda raw, refusal, queue: written.append((raw, refusal, queue))  # type: ignore[attr-defined]
    msg = Msg()
    consumer._refuse(msg, "boom")
    assert msg.acknowledged and written[0][1].kind is DeadLetterKind.REFUSED
    assert written[0][2] == QUEUE and b'"task": ["x"]' in written[0][0]
