"""What a finished job leaves on its worker: its metrics and its one log line.

The render task calls :func:`succeeded` or :func:`failed` once per attempt; nothing else
counts jobs or logs their end.
"""

from __future__ import annotations

import logging

from worker import metrics
from worker.consumer.policy import Action, Decision, Outcome
from worker.durations import TimedResult

logger = logging.getLogger(__name__)


def succeeded(task_id: str, done: TimedResult, size: str) -> None:
    result, d = done.result, done.durations
    metrics.observe_job(d, len(result.images), size)
    s = d.as_dict()  # the rounded seconds the result reports
    logger.info(
        "job %s succeeded: %d image(s) %dx%d steps=%d | queue_wait=%s slot_wait=%.3fs "
        "text_encoder=%.3fs unet=%.3fs vae=%.3fs encode=%.3fs upload=%.3fs total=%.3fs",
        task_id,
        len(result.images),
        result.width,
        result.height,
        result.steps,
        "-" if d.queue_wait is None else f"{d.queue_wait:.3f}s",
        s["slot_wait"],
        s["text_encoder"],
        s["unet"],
        s["vae"],
        s["encode"],
        s["upload"],
        s["total"],
    )


def failed(task_id: str, decision: Decision, error: BaseException, size: str) -> None:
    metrics.count_outcome(decision.outcome, size)
    if decision.action is Action.RETRY:
        logger.warning(
            "job %s: storage failed (%s); retry %d in %.1fs [size %s]",
            task_id,
            error,
            decision.retries + 1,
            decision.countdown_s,
            size,
        )
    elif decision.outcome is Outcome.GIVEN_BACK:
        logger.info("job %s given back: %s [size %s]", task_id, error, size)
    elif decision.action is Action.REQUEUE:
        logger.error("job %s requeued: %s [size %s]", task_id, error, size)
    elif decision.outcome in (Outcome.INVALID, Outcome.ABANDONED):
        logger.warning("job %s failed (not retried): %s [size %s]", task_id, error, size)
    elif decision.exhausted:
        logger.error(
            "job %s failed after %d retries: %s [size %s]", task_id, decision.retries, error, size
        )
    elif decision.outcome is Outcome.CANCELED:
        logger.info("job %s canceled: %s [size %s]", task_id, error, size)
    elif decision.outcome is Outcome.TIMED_OUT:
        logger.error("job %s failed: %s [size %s]", task_id, error, size)
    else:
        logger.error("job %s failed: %s [size %s]", task_id, error, size, exc_info=error)
