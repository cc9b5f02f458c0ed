"""Keep one malformed queue item from stopping the worker.

kombu's Redis transport decodes each raw item it pops from the queue in the worker's
main process; an item that is not a valid message envelope raises there and stops
the whole worker (Celery: "Unrecoverable error"). The guard below wraps that decode:
a bad item is logged, kept in the Redis list ``DEAD_LETTER_KEY`` with the reason
(nothing is lost silently), and handed to Celery as an envelope without a task,
which Celery rejects as an unknown message. Valid messages pass through unchanged.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from lcm_fleet.keys import DEAD_LETTER_KEY

logger = logging.getLogger(__name__)

DEAD_LETTER_MAX = 10_000


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` is not a message envelope kombu can deliver, or None if it is."""
    if isinstance(payload, list):
        return None  # kombu's own (message, exchange, routing_key) restore records
    if not isinstance(payload, dict):
        return f"the queue item is a JSON {type(payload).__name__}, not a message envelope"
    properties = payload.get("properties")
    if "body" not in payload or not isinstance(properties, dict):
        return "the envelope lacks 'body' or 'properties'"
    if "delivery_tag" not in properties or not isinstance(properties.get("delivery_info"), dict):
        return "the envelope's properties lack 'delivery_tag' or 'delivery_info'"
    if not isinstance(payload.get("headers", {}), dict):
        return "the envelope's 'headers' is not an object"
    return None


def _placeholder(reason: str) -> dict[str, Any]:
    """An envelope without a task: Celery logs it as unknown and rejects it."""
    return {
        "body": "",
        "headers": {"lcm_fleet_rejected": reason},
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "properties": {
            "delivery_tag": f"lcm-fleet-rejected-{uuid.uuid4().hex}",
            "delivery_info": {"exchange": "", "routing_key": ""},
            "body_encoding": "utf-8",
        },
    }


def guarded_loads(
    loads: Callable[[str], Any], dead_letter: Callable[[str, str], None]
) -> Callable[[str], Any]:
    def _loads(text: Any) -> Any:
        try:
            payload = loads(text)
        except Exception as e:
            reason = f"not JSON: {e}"
        else:
            problem = envelope_problem(payload)
            if problem is None:
                return payload
            reason = problem
        raw = text if isinstance(text, str) else repr(text)
        logger.error("rejected a malformed queue item (%s): %.200r", reason, raw)
        try:
            dead_letter(raw, reason)
        except Exception:
            logger.exception("could not record the malformed item in %s", DEAD_LETTER_KEY)
        return _placeholder(reason)

    return _loads


def redis_dead_letter(redis_url: str, **ssl_kwargs: Any) -> Callable[[str, str], None]:
    client: list[Any] = []

    def record(raw: str, reason: str) -> None:
        if not client:
            import redis

            client.append(redis.Redis.from_url(redis_url, socket_timeout=5, **ssl_kwargs))
        entry = json.dumps({"at": time.time(), "reason": reason, "raw": raw[:100_000]})
        pipe = client[0].pipeline()
        pipe.lpush(DEAD_LETTER_KEY, entry)
        pipe.ltrim(DEAD_LETTER_KEY, 0, DEAD_LETTER_MAX - 1)
        pipe.execute()

    return record


def install(redis_url: str, **ssl_kwargs: Any) -> None:
    """Wrap the Redis transport's decode of queue items (once per process)."""
    from kombu.transport import redis as kombu_redis

    current = getattr(kombu_redis, "loads")  # noqa: B009  (a module global, not typed)
    if getattr(current, "_lcm_fleet_guard", False):
        return
    wrapped = guarded_loads(current, redis_dead_letter(redis_url, **ssl_kwargs))
    wrapped._lcm_fleet_guard = True  # type: ignore[attr-defined]
    setattr(kombu_redis, "loads", wrapped)  # noqa: B010
