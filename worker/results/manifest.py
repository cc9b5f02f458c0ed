"""The worker's part in a batch's output manifest: the job that ends a batch writes it.

lcm_fleet/batch_manifest.py builds it from the job records; the worker whose job was the
batch's last (lcm_fleet/records.py's exact counts say which, once) writes it, so a batch
submitted from the CLI gets its manifest without the HTTP API or lcm-webhooks running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lcm_fleet.batch_manifest import write_manifest
from lcm_fleet.records import RecordStore
from lcm_fleet.storage import ObjectStore

logger = logging.getLogger(__name__)


def manifest_writer(records: RecordStore, store: ObjectStore, prefix: str) -> Callable[[str], None]:
    """The callback a job's lifecycle calls when its end finished its batch."""

    def write(batch_id: str) -> None:
        try:
            write_manifest(records, store, prefix, batch_id)
        except Exception as e:  # the job itself succeeded: its end stays recorded
            logger.error(
                "batch %s ended, but its manifest could not be written (%s: %s); write it "
                "with `lcm batch manifest %s --write`, or resubmit the batch",
                batch_id,
                type(e).__name__,
                e,
                batch_id,
            )

    return write
