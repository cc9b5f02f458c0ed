"""What ``lcm-worker``'s exit code means; ``lcm-fleet`` restarts a unit by it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    #: Stopped on SIGTERM/SIGINT after its running jobs (or ``--check`` passed).
    OK = 0
    #: Celery stopped on an unrecoverable error (its "Unrecoverable error" line says which),
    #: e.g. the broker lost for longer than its reconnection attempts. Restarted.
    FAILURE = 1
    #: Settings, artifact or bucket refused at start: restarting cannot help. Not restarted.
    CONFIG = 2
    #: A render process could not be started again. Restarted.
    RENDERER = 3
    #: Redis did not answer within LCM_BROKER_CONNECT_TIMEOUT_S at start. Restarted, without
    #: counting towards lcm-fleet's give-up (the broker may come back).
    BROKER = 4
