"""Seconds per stage of one job, each filled in where it is measured.

- text_encoder, unet, vae (genai's StageTimes, summed over the images) and render (the
  wall time of the render loop): worker/render/images.py;
- encode, store_wait (waiting for the last uploads) and upload: worker/results/writer.py;
- slot_wait (waiting for a free render process): worker/job.py;
- total and queue_wait (submit to start, only with the producer's header):
  worker/consumer/tasks.py.

``as_dict`` is the ``durations_s`` of a JobResult: the stages measured so far, in this
order, rounded to 4 decimals. ``result.json`` is written before the upload time is known,
so it holds the render stages, encode and store_wait; the task's result holds them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lcm_fleet.contract import JobResult
from worker.render.pipeline import StageTimes


@dataclass(frozen=True)
class JobDurations:
    text_encoder: float = 0.0
    unet: float = 0.0
    vae: float = 0.0
    render: float = 0.0
    encode: float | None = None
    store_wait: float | None = None
    upload: float | None = None
    slot_wait: float | None = None
    total: float | None = None
    queue_wait: float | None = None

    def plus(self, image: StageTimes) -> JobDurations:
        """These durations with one more image's render stages added."""
        return replace(
            self,
            text_encoder=self.text_encoder + image.text_encoder_s,
            unet=self.unet + image.unet_s,
            vae=self.vae + image.vae_s,
        )

    def but(self, **seconds: float | None) -> JobDurations:
        """These durations with the given stages set; a stage given as ``None`` was not
        measured and stays as it was."""
        measured = {stage: s for stage, s in seconds.items() if s is not None}
        return replace(self, **measured)

    def as_dict(self) -> dict[str, float]:
        """``JobResult.durations_s``: each measured stage, rounded to 4 decimals."""
        return {stage: round(s, 4) for stage, s in asdict(self).items() if s is not None}


@dataclass(frozen=True)
class TimedResult:
    """A job's result with the durations it reports (``result.durations_s`` is always
    ``durations.as_dict()``)."""

    result: JobResult
    durations: JobDurations

    @classmethod
    def of(cls, result: JobResult, durations: JobDurations) -> TimedResult:
        return cls(result.model_copy(update={"durations_s": durations.as_dict()}), durations)

    def but(self, **seconds: float | None) -> TimedResult:
        """The same result with the given stages set (see JobDurations.but)."""
        return TimedResult.of(self.result, self.durations.but(**seconds))
