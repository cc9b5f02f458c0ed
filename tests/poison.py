"""Queue items for the poison tests: envelopes as a Celery producer writes them, and
hypothesis strategies of items that are bad by construction (the unit tests of the screen
and the integration test against a real worker share them)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections import Counter
from typing import Any

from hypothesis import strategies as st

from lcm_fleet.contract import TASK_RENDER, TASK_WEBHOOK

#: LCM_MAX_MESSAGE_BYTES the tests run with.
MAX_MESSAGE_BYTES = 16 * 1024


def envelope(
    args: list[Any], queue: str, *, task_id: str | None = None, **headers: Any
) -> dict[str, Any]:
    """What celery's send_task puts on a Redis queue for ``args`` (same keys and types)."""
    task_id = task_id or str(uuid.uuid4())
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    head: dict[str, Any] = {
        "lang": "py",
        "task": TASK_RENDER,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args)[:1024],
        "kwargsrepr": "{}",
        "origin": "gen1@test",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    head.update(headers)
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": head,
        "properties": {
            "correlation_id": task_id,
            "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def encode(item: Any) -> bytes:
    return json.dumps(item).encode()


def _body(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_text = json_values.filter(lambda v: not isinstance(v, str))
not_object = json_values.filter(lambda v: not isinstance(v, dict))
not_list = json_values.filter(lambda v: not isinstance(v, list))


def _set(path: tuple[str, ...], value: Any) -> Any:
    def apply(env: dict[str, Any]) -> dict[str, Any]:
        target = env
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return env

    return apply


def _drop(path: tuple[str, ...]) -> Any:
    def apply(env: dict[str, Any]) -> dict[str, Any]:
        target = env
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return env

    return apply


bad_timelimit = st.one_of(
    st.just("x"),
    st.text(min_size=1, max_size=5),
    st.lists(st.none() | st.integers(min_value=0), max_size=5).filter(lambda v: len(v) != 2),
    st.tuples(st.integers(max_value=-1), st.none()).map(list),
    st.tuples(st.booleans(), st.booleans()).map(list),
    st.tuples(st.text(max_size=3), st.none()).map(list),
    st.integers(),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
)
non_base64 = st.text(
    alphabet=st.characters(
        codec="ascii",
        exclude_characters="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
    ),
    min_size=1,
    max_size=30,
) | st.just("abc")  # wrong padding
bad_bodies = st.one_of(
    not_list.map(_body),
    st.lists(json_values, max_size=5).filter(lambda v: len(v) != 3).map(_body),
    st.tuples(not_list, st.just({}), st.just({})).map(lambda t: _body(list(t))),
    st.tuples(st.just([]), not_object, st.just({})).map(lambda t: _body(list(t))),
    st.tuples(st.just([]), st.just({}), not_object).map(lambda t: _body(list(t))),
    st.just(_body([[], {}, {"callbacks": [{"task": "x"}]}])),
    st.binary(min_size=1, max_size=40)
    .filter(lambda b: not _is_json(b))
    .map(lambda b: base64.b64encode(b).decode()),
)


def _is_iso(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        return False


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"))
        return True
    except ValueError:
        return False


#: Mutations of a good envelope, each of which makes it a bad item.
mutations = st.one_of(
    st.sampled_from(["body", "properties", "headers", "content-type", "content-encoding"]).map(
        lambda k: _drop((k,))
    ),
    not_object.map(lambda v: _set(("properties",), v)),
    not_object.map(lambda v: _set(("headers",), v)),
    (not_text | st.just("")).map(lambda v: _set(("properties", "delivery_tag"), v)),
    st.just(_drop(("properties", "delivery_tag"))),
    not_object.map(lambda v: _set(("properties", "delivery_info"), v)),
    st.sampled_from(["exchange", "routing_key"]).map(
        lambda k: _drop(("properties", "delivery_info", k))
    ),
    st.text(max_size=10)
    .filter(lambda v: v.lower() not in ("base64", "utf-8"))
    .map(lambda v: _set(("properties", "body_encoding"), v)),
    st.just(_set(("properties", "body_encoding"), "rot13")),
    non_base64.map(lambda v: _set(("body",), v)),
    not_text.map(lambda v: _set(("body",), v)),
    bad_bodies.map(lambda v: _set(("body",), v)),
    st.text(max_size=20)
    .filter(lambda v: v != "application/json")
    .map(lambda v: _set(("content-type",), v)),
    (json_values.filter(lambda v: v not in (TASK_RENDER, TASK_WEBHOOK))).map(
        lambda v: _set(("headers", "task"), v)
    ),
    (not_text | st.just("")).map(lambda v: _set(("headers", "id"), v)),
    st.just(_drop(("headers", "id"))),
    st.just(_drop(("headers", "task"))),
    bad_timelimit.map(lambda v: _set(("headers", "timelimit"), v)),
    (st.text(max_size=5) | st.booleans() | st.integers(max_value=-1) | st.floats()).map(
        lambda v: _set(("headers", "retries"), v)
    ),
    (
        st.text(max_size=10).filter(lambda v: not _is_iso(v)) | st.just("9999-01-01T00:00:00+00:00")
    ).map(lambda v: _set(("headers", "eta"), v)),
    st.sampled_from(["args", "callbacks", "hostname", "delivery_info", "compression"]).map(
        lambda k: _set(("headers", k), "x")
    ),
    (not_object.filter(lambda v: v is not None)).map(lambda v: _set(("headers", "stamps"), v)),
    st.just(_set(("properties", "priority"), "high")),
)


def mutated(queue: str, task: str = TASK_RENDER) -> st.SearchStrategy[bytes]:
    return mutations.map(lambda m: encode(m(envelope([{"prompt": "p"}], queue, task=task))))


def oversized(queue: str, task: str = TASK_RENDER) -> st.SearchStrategy[bytes]:
    return st.integers(min_value=MAX_MESSAGE_BYTES, max_value=3 * MAX_MESSAGE_BYTES).map(
        lambda n: encode(envelope([{"prompt": "x" * n}], queue, task=task))
    )


def not_utf8(queue: str, task: str = TASK_RENDER) -> st.SearchStrategy[bytes]:
    return st.integers(min_value=0, max_value=200).map(
        lambda i: (lambda raw: raw[: i % len(raw)] + b"\xff\xfe" + raw[i % len(raw) :])(
            encode(envelope([{"prompt": "p"}], queue, task=task))
        )
    )


def bad_items(queue: str, task: str = TASK_RENDER) -> st.SearchStrategy[bytes]:
    """Queue items a consumer of ``queue`` (whose items carry ``task``) must dead-letter (bad
    by construction)."""
    return st.one_of(
        st.binary(max_size=64).filter(lambda b: not _is_json(b)),
        not_object.map(encode),
        st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(encode),
        mutated(queue, task),
        mutated(queue, task),
        mutated(queue, task),
        oversized(queue, task),
        not_utf8(queue, task),
    )


good_headers = st.fixed_dictionaries(
    {},
    optional={
        "retries": st.integers(min_value=0, max_value=10),
        "timelimit": st.tuples(
            st.none() | st.integers(min_value=0, max_value=10**6),
            st.none() | st.floats(min_value=0, max_value=1e6),
        ).map(list),
        "lcm_submitted_at": st.floats(min_value=0, max_value=2e9),
        "redelivered": st.booleans(),
        "x_trace": json_values,
    },
)


def good_items(queue: str) -> st.SearchStrategy[bytes]:
    """Envelopes a worker must take (as jobs; the job itself may still be invalid)."""
    return st.tuples(st.lists(json_values, max_size=3), good_headers).map(
        lambda t: encode(envelope(t[0], queue, **t[1]))
    )


def copy_of(item: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(item)


def dead_lettered_since(redis: Any, since: float) -> Counter[str]:
    """sha256 -> how many times it was dead-lettered at or after ``since`` (Unix seconds).

    Not a difference of two counts over the whole list: the list is trimmed to its bound
    (LCM_DEAD_LETTER_MAX) from its oldest end, so on a Redis that earlier runs filled, an
    item common to them (the empty one) would seem dead-lettered fewer times than it was.
    """
    from lcm_fleet.dead_letter import DeadLetters

    return Counter(e.sha256 for e in DeadLetters(redis).entries() if e.at >= since)
