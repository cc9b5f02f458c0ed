"""Decide, from the raw bytes of a queue item, whether kombu and Celery can take it as a job.

An lcm queue (render or webhooks) holds kombu's Redis envelopes of Celery (protocol 2) task
messages. Every step that kombu and Celery take with an item runs in the consuming worker's
(``lcm-worker``'s, ``lcm-webhooks``') main process, and most of
them raise on an item that is not what a Celery producer writes; that exception stops the
worker ("Unrecoverable error"). Where each case breaks in the pinned versions (kombu 5.7,
celery 5.7):

- not UTF-8 or not JSON: ``kombu.transport.redis.Channel._brpop_read`` (``loads``);
- a JSON array, number or string, or an envelope without ``properties``/``delivery_tag``:
  ``kombu.transport.virtual.Message.__init__`` (``payload['properties']``);
- a body that is not base64 (``binascii.Error``) or an unknown ``body_encoding`` such as
  ``rot13`` (``None.decode``): ``Channel.decode_body``, from ``Message.__init__``;
- a ``delivery_tag`` that is not a string, a ``delivery_info`` without exchange or routing
  key: the Redis ``QoS.append`` (redis-py refuses a dict; ``KeyError``);
- a header ``task`` that is a list: ``Consumer.on_task_received`` (``strategies[type_]``);
- headers without ``id``, a decoded body that is not ``[args, kwargs, embed]``: celery's
  ``Request.__init__``; ``timelimit: "x"``: ``Request.execute_using_pool`` (unpacking);
- an ``eta`` far ahead is held in the worker's memory, unacknowledged, and Redis delivers it
  a second time after the visibility timeout.

So :func:`screen` checks, before anything is decoded by kombu, everything those steps rely
on, and answers a :class:`Refusal` (kind and reason) or None. It accepts exactly what a Celery
producer of this project's tasks writes (and what Celery's own retry writes); anything else is
refused, naming the field and (a short prefix of) the value.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kombu.utils.json import loads as kombu_loads

from lcm_fleet.dead_letter import DeadLetterKind

#: The only content type and encoding the worker accepts (WIRE_CONFIG: JSON only).
CONTENT_TYPE = "application/json"
#: kombu's Redis transport writes base64 bodies; ``utf-8`` means the body is the text itself.
BODY_ENCODINGS = ("base64", "utf-8")
#: Longest id, delivery tag, exchange or routing key taken.
NAME_MAX = 256
#: Longest argsrepr/kwargsrepr/shadow/origin (Celery's producers cut argsrepr at 1024).
REPR_MAX = 4096
#: Headers whose name would overwrite a field of Celery's task context (celery.app.task.Context)
#: and are not among the checked protocol-2 headers below.
RESERVED_HEADERS = frozenset(
    {
        "args", "kwargs", "callbacks", "errbacks", "chain", "chord", "children",
        "called_directly", "delivery_info", "headers", "hostname", "is_eager", "logfile",
        "loglevel", "properties", "reply_to", "correlation_id", "soft_time_limit",
        "time_limit", "taskset", "utc", "compression",
    }
)  # fmt: skip
#: Keys of the body's third element (Celery's "embed"); this project's producers send None.
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


@dataclass(frozen=True)
class Refusal:
    kind: DeadLetterKind
    reason: str


@dataclass(frozen=True)
class ScreenPolicy:
    #: Items longer than this (bytes) are refused before they are decoded.
    max_message_bytes: int
    #: Task names this worker's queues carry.
    tasks: Collection[str]
    #: An ETA further ahead than this (seconds) is refused: Redis would deliver it twice.
    max_eta_ahead_s: float
    clock: Callable[[], float] = lambda: datetime.now(timezone.utc).timestamp()


class _Refused(Exception):
    def __init__(self, kind: DeadLetterKind, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises (recursion) still names the type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _kind_name(value: Any) -> str:
    return type(value).__name__


def _fail(kind: DeadLetterKind, field: str, value: Any, want: str) -> _Refused:
    return _Refused(kind, f"{field} is {short(value)} ({_kind_name(value)}); expected {want}")


def _str(kind: DeadLetterKind, field: str, value: Any, *, limit: int, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise _fail(kind, field, value, f"a {'' if empty else 'non-empty '}text of at most {limit}")
    return value


def _opt_str(kind: DeadLetterKind, field: str, value: Any, limit: int = NAME_MAX) -> None:
    if value is not None:
        _str(kind, field, value, limit=limit, empty=True)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (_int(value) or isinstance(value, float)) and math.isfinite(value)


def _envelope(payload: Any) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The envelope's headers, properties and raw body bytes (kombu's part)."""
    env = DeadLetterKind.BAD_ENVELOPE
    if not isinstance(payload, dict):
        raise _Refused(
            env, f"the item is a JSON {_kind_name(payload)}, not a message envelope (an object)"
        )
    for key in ("body", "properties", "headers", "content-type", "content-encoding"):
        if key not in payload:
            raise _Refused(env, f"the envelope has no {key!r}")
    properties = payload["properties"]
    if not isinstance(properties, dict):
        raise _fail(env, "properties", properties, "an object")
    _str(env, "properties.delivery_tag", properties.get("delivery_tag"), limit=NAME_MAX)
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        raise _fail(env, "properties.delivery_info", info, "an object")
    for key in ("exchange", "routing_key"):
        _str(env, f"properties.delivery_info.{key}", info.get(key), limit=NAME_MAX, empty=True)
    if "redelivered" in info and not isinstance(info["redelivered"], bool):
        raise _fail(env, "properties.delivery_info.redelivered", info["redelivered"], "a boolean")
    priority = properties.get("priority")
    if priority is not None and not (_int(priority) and 0 <= priority <= 255):
        raise _fail(env, "properties.priority", priority, "an integer from 0 to 255")
    for key in ("correlation_id", "reply_to"):
        _opt_str(env, f"properties.{key}", properties.get(key))
    mode = properties.get("delivery_mode")
    if mode is not None and not _int(mode):
        raise _fail(env, "properties.delivery_mode", mode, "an integer")
    encoding = properties.get("body_encoding")
    if not isinstance(encoding, str) or encoding.lower() not in BODY_ENCODINGS:
        raise _fail(env, "properties.body_encoding", encoding, " or ".join(BODY_ENCODINGS))
    body = payload["body"]
    if not isinstance(body, str):
        raise _fail(DeadLetterKind.BAD_BODY, "body", body, "a text")
    if encoding.lower() == "base64":
        try:
            raw = binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
        except (ValueError, binascii.Error) as e:
            raise _Refused(DeadLetterKind.BAD_BODY, f"body is not valid base64: {e}") from e
    else:
        raw = body.encode("utf-8", errors="surrogatepass")
    content_type = payload["content-type"]
    if content_type != CONTENT_TYPE:
        raise _fail(env, "content-type", content_type, repr(CONTENT_TYPE))
    content_encoding = payload["content-encoding"]
    if not isinstance(content_encoding, str) or content_encoding.lower() != "utf-8":
        raise _fail(env, "content-encoding", content_encoding, "'utf-8'")
    headers = payload["headers"]
    if not isinstance(headers, dict):
        raise _fail(DeadLetterKind.BAD_HEADERS, "headers", headers, "an object")
    return headers, properties, raw


def _iso_time(field: str, value: Any) -> float:
    bad = DeadLetterKind.BAD_HEADERS
    if not isinstance(value, str) or len(value) > 64:
        raise _fail(bad, field, value, "an ISO 8601 time")
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError, OSError) as e:
        raise _Refused(bad, f"headers.{field} is {short(value)}: not an ISO 8601 time ({e})") from e


def _headers(headers: dict[str, Any], policy: ScreenPolicy) -> None:
    bad = DeadLetterKind.BAD_HEADERS
    task = headers.get("task")
    if not isinstance(task, str) or task not in policy.tasks:
        raise _Refused(
            DeadLetterKind.UNKNOWN_TASK,
            f"headers.task is {short(task)}; this worker's queues carry only "
            f"{', '.join(sorted(policy.tasks))}",
        )
    _str(bad, "headers.id", headers.get("id"), limit=NAME_MAX)
    if any(ord(c) < 32 or ord(c) == 127 for c in headers["id"]):
        raise _Refused(bad, f"headers.id {short(headers['id'])} holds control characters")
    for key in ("root_id", "parent_id", "group", "lang"):
        _opt_str(bad, f"headers.{key}", headers.get(key))
    for key in ("argsrepr", "kwargsrepr", "shadow", "origin"):
        _opt_str(bad, f"headers.{key}", headers.get(key), REPR_MAX)
    if headers.get("meth") is not None:
        raise _fail(bad, "headers.meth", headers["meth"], "null")
    retries = headers.get("retries", 0)
    if retries is not None and not (_int(retries) and 0 <= retries <= 10_000):
        raise _fail(bad, "headers.retries", retries, "an integer from 0")
    for key in ("group_index", "replaced_task_nesting"):
        value = headers.get(key)
        if value is not None and not (_int(value) and value >= 0):
            raise _fail(bad, f"headers.{key}", value, "an integer from 0 or null")
    for key in ("ignore_result", "redelivered"):
        value = headers.get(key)
        if value is not None and not isinstance(value, bool):
            raise _fail(bad, f"headers.{key}", value, "a boolean or null")
    timelimit = headers.get("timelimit")
    if timelimit is not None and not (
        isinstance(timelimit, list)
        and len(timelimit) == 2
        and all(t is None or (_number(t) and t >= 0) for t in timelimit)
    ):
        raise _fail(bad, "headers.timelimit", timelimit, "[soft, hard]: two numbers or nulls")
    stamped = headers.get("stamped_headers")
    if stamped is not None and not (
        isinstance(stamped, list) and all(isinstance(s, str) for s in stamped)
    ):
        raise _fail(bad, "headers.stamped_headers", stamped, "a list of texts or null")
    stamps = headers.get("stamps")
    if stamps is not None and not isinstance(stamps, dict):
        raise _fail(bad, "headers.stamps", stamps, "an object or null")
    submitted = headers.get("lcm_submitted_at")
    if submitted is not None and not _number(submitted):
        raise _fail(bad, "headers.lcm_submitted_at", submitted, "a number (Unix seconds)")
    eta = headers.get("eta")
    if eta is not None:
        ahead = _iso_time("eta", eta) - policy.clock()
        if ahead > policy.max_eta_ahead_s:
            raise _Refused(
                bad,
                f"headers.eta {short(eta)} is {ahead:.0f}s ahead, more than "
                f"{policy.max_eta_ahead_s:.0f}s (the broker's visibility timeout would deliver "
                "it twice)",
            )
    if headers.get("expires") is not None:
        _iso_time("expires", headers["expires"])
    reserved = RESERVED_HEADERS.intersection(headers)
    if reserved:
        raise _Refused(
            bad, f"headers {', '.join(sorted(reserved))} would overwrite Celery's task context"
        )


def _body(raw: bytes) -> None:
    bad = DeadLetterKind.BAD_BODY
    try:
        body = kombu_loads(raw.decode("utf-8"))
    except Exception as e:  # UnicodeDecodeError, JSONDecodeError, RecursionError, ...
        raise _Refused(bad, f"body is not UTF-8 JSON: {short(str(e), 120)}") from e
    if not (isinstance(body, list) and len(body) == 3):
        raise _fail(bad, "body", body, "[args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list):
        raise _fail(bad, "body args", args, "a list")
    if not isinstance(kwargs, dict):
        raise _fail(bad, "body kwargs", kwargs, "an object")
    if not isinstance(embed, dict) or not set(embed) <= EMBED_KEYS:
        raise _fail(bad, "body embed", embed, f"an object with keys from {sorted(EMBED_KEYS)}")
    for key, value in embed.items():
        if value is not None and value != []:
            raise _fail(bad, f"body embed.{key}", value, "null (no callbacks, chains or chords)")


def screen(raw: bytes | str, policy: ScreenPolicy) -> Refusal | None:
    """None when kombu and Celery can take ``raw`` as a task message; else why not."""
    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else raw
    if len(data) > policy.max_message_bytes:
        return Refusal(
            DeadLetterKind.TOO_LARGE,
            f"the item is {len(data)} bytes, over LCM_MAX_MESSAGE_BYTES={policy.max_message_bytes}",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Refusal(DeadLetterKind.NOT_UTF8, f"the item is not UTF-8 text: {e}")
    try:
        payload = kombu_loads(text)
    except Exception as e:  # JSONDecodeError, ValueError (kombu's __type__ hooks), Recursion
        return Refusal(DeadLetterKind.NOT_JSON, f"the item is not JSON: {short(str(e), 120)}")
    try:
        headers, _properties, body = _envelope(payload)
        _headers(headers, policy)
        _body(body)
    except _Refused as e:
        return Refusal(e.kind, e.reason)
    except RecursionError:
        return Refusal(DeadLetterKind.BAD_ENVELOPE, "the item is nested too deeply")
    return None
