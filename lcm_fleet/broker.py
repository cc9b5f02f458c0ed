"""The broker's Redis as every role sees it: its address for messages, its transient faults,
and whether it keeps what it is given (persistence).

- :func:`masked_url` (from lcm_fleet.settings): a Redis URL with its password as ``***``.
- :data:`REDIS_TRANSIENT`: the redis-py errors worth retrying (connection lost, timeout,
  Redis still loading its AOF after a restart).
- :func:`ride_out`: a call retried through a Redis outage for a time budget, then one line
  (:class:`BrokerUnavailable`), never a traceback.
- :func:`persistence_problem` / :func:`warn_if_not_persistent`: ``CONFIG GET appendonly`` and
  ``save``; a Redis with neither AOF nor RDB snapshots loses every queued job and record at
  a restart, so workers and producers log a warning at start. A Redis that refuses CONFIG
  (managed services often rename or disable it) is not warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.errors import LcmError
from lcm_fleet.keys import persistence_warned_key
from lcm_fleet.settings import ConnectionSettings, masked_url

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: redis-py errors worth retrying (BusyLoadingError, Redis loading its AOF, is a ConnectionError).
REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


#: Between calls while Redis is away (producers, the CLI).
OUTAGE_BACKOFF = Backoff(base_s=0.2, cap_s=3.0)


def _config(client: Any, name: str) -> str:
    raw = client.config_get(name)
    value = raw.get(name, raw.get(name.encode(), "")) if isinstance(raw, dict) else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def persistence_problem(client: Any) -> str | None:
    """What a restart of this Redis would lose, or None (persistent, or CONFIG refused)."""
    try:
        appendonly = _config(client, "appendonly")
        save = _config(client, "save")
    except redis.exceptions.ResponseError:
        return None  # CONFIG disabled or renamed: cannot tell
    if appendonly.strip().lower() == "yes":
        return None
    if save.strip():
        return (
            f"has no AOF (appendonly no; RDB snapshots '{save}'): a restart loses every job "
            "queued or finished since the last snapshot"
        )
    return (
        "has no persistence (appendonly no, save ''): a restart loses every queued job, "
        "every job record and every result"
    )


def warn_if_not_persistent(
    settings: ConnectionSettings, role: str, client: Any = None, quiet_for_s: int = 0
) -> str | None:
    """Log a warning when the broker (LCM_REDIS_URL) has no AOF; the warning, or None.

    ``quiet_for_s``: say it at most once in that many seconds per role and broker (a key
    in that Redis remembers it), for commands run many times a day (``lcm submit``); the
    long-running roles say it at every start. Never raises: a Redis that does not answer
    is reported by the caller's own checks.
    """
    url = settings.redis_url
    own = client is None
    try:
        if own:
            client = settings.redis_client(socket_connect_timeout=3, socket_timeout=3)
        problem = persistence_problem(client)
        if problem is not None and quiet_for_s > 0:
            said_lately = not client.set(persistence_warned_key(role), "1", nx=True, ex=quiet_for_s)
            if said_lately:
                return None
    except Exception as e:
        logger.debug("could not read the persistence settings of %s: %s", masked_url(url), e)
        return None
    finally:
        if own and client is not None:
            client.close()
    if problem is None:
        return None
    message = (
        f"{role}: the broker at {masked_url(url)} {problem}; run Redis with appendonly yes "
        "and appendfsync everysec (docs/operations.md#redis-persistence)"
    )
    logger.warning(message)
    return message


class BrokerUnavailable(LcmError):
    """Redis did not answer within the caller's deadline; the message names its (masked)
    address and what to do."""


def ride_out(
    fn: Callable[[], T],
    *,
    url: str,
    what: str,
    budget_s: float,
    transient: tuple[type[BaseException], ...] = REDIS_TRANSIENT,
    backoff: Backoff = OUTAGE_BACKOFF,
) -> T:
    """Call ``fn``, retrying connection errors with capped, jittered backoff for ``budget_s``;
    then :class:`BrokerUnavailable` (one line, the password masked)."""
    try:
        return call_with_backoff(
            fn, transient=transient, backoff=backoff, what=what, budget_s=max(budget_s, 0.001)
        )
    except transient as e:
        raise BrokerUnavailable(unreachable(url, e, budget_s)) from e


def unreachable(url: str, error: BaseException, waited_s: float | None = None) -> str:
    """The one line that says Redis does not answer."""
    waited = f" for {waited_s:.0f}s" if waited_s else ""
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return (
        f"Redis at {masked_url(url)} did not answer{waited} ({type(error).__name__}: {detail}); "
        "check LCM_REDIS_URL and that Redis is running"
    )
