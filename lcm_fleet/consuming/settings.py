"""The settings every consumer of lcm queues shares (``LCM_MAX_MESSAGE_BYTES``, ...)."""

from __future__ import annotations

from pydantic import Field

from lcm_fleet.settings import ConnectionSettings


class ConsumerSettings(ConnectionSettings):
    """Connection settings, and the screen's limits (lcm_fleet/consuming/screen.py)."""

    #: Queue items longer than this (bytes) are refused before they are decoded and kept,
    #: cut short, in the dead-letter list (a valid job is a few kilobytes).
    max_message_bytes: int = Field(default=256 * 1024, ge=4096, le=64 * 1024 * 1024)
    #: Entries the dead-letter list keeps (the oldest go first).
    dead_letter_max: int = Field(default=10_000, ge=10, le=1_000_000)
