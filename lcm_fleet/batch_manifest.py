"""A batch's output manifest: one JSONL line per row, in S3 beside the batch's images.

Written when the batch ends, by whichever process ends it (lcm_fleet/records.py says which:
the worker whose job was the batch's last, or the producer whose seal found every job
done), and written again when a resumed batch ends again; so it needs neither the HTTP
API nor lcm-webhooks. Its key is ``<output_prefix>/manifest.jsonl``, or
``batches/<batch_id>/manifest.jsonl`` for a batch without an output prefix
(lcm_fleet/keys.py). The lines are built from the job records (their result names each
image's key, seed, sha256 and size), sorted by row; the summary (counts by state, wall
time from the first submit to the end, images/s) goes into the batch record.

It also holds the check a resume makes of a row's stored objects (:func:`verify_stored`,
which the worker's redelivery check uses too): result.json present and the job's, every
image it lists present with its sha256 and size.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lcm_fleet.contract import Job, JobResult, JobState
from lcm_fleet.keys import batch_manifest_key, image_key, result_key
from lcm_fleet.records import BatchCounts, BatchRecord, BatchSummary, JobRecord, RecordStore
from lcm_fleet.storage import ObjectStore

logger = logging.getLogger(__name__)

#: Content type of the manifest object.
MANIFEST_CONTENT_TYPE = "application/x-ndjson"
#: Job records read per round trip while the manifest is built.
READ_PAGE = 1000
#: :attr:`StoredCheck.problem` of a job that stored nothing yet.
NO_RESULT = "no result.json"


class ManifestImage(BaseModel):
    """One stored image of a row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    key: str
    seed: int
    sha256: str
    bytes: int = Field(ge=0)


class ManifestLine(BaseModel):
    """One row of a batch: what became of it and which objects hold it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The row's line in the bulk file (for a JSON batch, its 1-based position).
    row: int = Field(ge=1)
    job_id: str
    #: None: the job's record expired before the manifest was written.
    state: JobState | None
    #: The job's seed (image ``i`` has ``seed + i``); None without a record.
    seed: int | None = None
    prompt: str | None = None
    #: The job's result.json (succeeded jobs), else None.
    result_key: str | None = None
    #: Every image of a succeeded row.
    images: list[ManifestImage] = Field(default_factory=list)
    #: Keys of the images a failed or canceled row left in storage (unverified).
    partial_keys: list[str] = Field(default_factory=list)
    #: Seconds per stage of a succeeded job (the result's ``durations_s``).
    durations_s: dict[str, float] = Field(default_factory=dict)
    #: Seconds from submit to end, from the record.
    elapsed_s: float | None = None
    #: Why it failed or was canceled.
    reason: str | None = None


def _line(position: int, job_id: str, record: JobRecord | None, s3_prefix: str) -> ManifestLine:
    if record is None:
        return ManifestLine(row=position, job_id=job_id, state=None, reason="record expired")
    job = record.job
    images: list[ManifestImage] = []
    result_at: str | None = None
    durations: dict[str, float] = {}
    if record.result is not None and record.state is JobState.SUCCEEDED:
        images = [
            ManifestImage(index=i.index, key=i.key, seed=i.seed, sha256=i.sha256, bytes=i.bytes)
            for i in record.result.images
        ]
        result_at = result_key(s3_prefix, job_id, job.output_prefix if job else None)
        durations = dict(record.result.durations_s)
    ended = record.finished_at
    return ManifestLine(
        row=record.row or position,
        job_id=job_id,
        state=record.state,
        seed=job.seed if job else None,
        prompt=job.prompt if job else None,
        result_key=result_at,
        images=images,
        partial_keys=list(record.partial_keys),
        durations_s=durations,
        elapsed_s=None if ended is None else max(0.0, ended - record.created_at),
        reason=record.reason if record.state is not JobState.SUCCEEDED else None,
    )


def batch_lines(records: RecordStore, batch_id: str, s3_prefix: str) -> list[ManifestLine]:
    """The manifest's lines, sorted by row (each job once, however often it was resubmitted)."""
    lines: list[ManifestLine] = []
    seen: set[str] = set()
    offset = 0
    while ids := records.batch_job_ids(batch_id, offset, READ_PAGE):
        fresh = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(fresh)
        for job_id, record in zip(fresh, records.get_jobs(fresh), strict=True):
            lines.append(_line(len(lines) + 1, job_id, record, s3_prefix))
        offset += len(ids)
    lines.sort(key=lambda line: line.row)
    return lines


def summarise(
    batch: BatchRecord, lines: list[ManifestLine], key: str, now: float | None = None
) -> BatchSummary:
    """Counts by state, images, wall time (first submit to the last job's end), images/s."""
    at = time.time() if now is None else now
    by_state = {state.value: 0 for state in JobState}
    for line in lines:
        if line.state is not None:
            by_state[line.state.value] += 1
    images = sum(len(line.images) for line in lines if line.state is JobState.SUCCEEDED)
    end = batch.finished_at or at
    wall = max(0.0, end - batch.created_at)
    return BatchSummary(
        counts=BatchCounts(**by_state),
        rows=len(lines),
        images=images,
        wall_s=round(wall, 3),
        images_per_s=round(images / wall, 3) if wall > 0 else 0.0,
        manifest_key=key,
        written_at=at,
    )


def manifest_body(lines: list[ManifestLine]) -> bytes:
    return "".join(line.model_dump_json() + "\n" for line in lines).encode()


def parse_manifest(body: bytes) -> Iterator[ManifestLine]:
    for text in body.decode().splitlines():
        if text.strip():
            yield ManifestLine.model_validate_json(text)


def write_manifest(
    records: RecordStore, store: ObjectStore, s3_prefix: str, batch_id: str
) -> BatchSummary | None:
    """Build the batch's manifest from its records, put it (verified), and keep its summary
    in the batch record. None when the batch record is gone."""
    batch = records.get_batch(batch_id)
    if batch is None:
        return None
    t0 = time.perf_counter()
    lines = batch_lines(records, batch_id, s3_prefix)
    key = batch_manifest_key(s3_prefix, batch_id, batch.output_prefix)
    store.put(key, manifest_body(lines), MANIFEST_CONTENT_TYPE)
    summary = summarise(batch, lines, key)
    records.set_batch_summary(batch_id, summary)
    logger.info(
        "batch %s: manifest of %d row(s) written to %s in %.2fs (%d image(s), %.1f images/s)",
        batch_id,
        len(lines),
        store.uri(key),
        time.perf_counter() - t0,
        summary.images,
        summary.images_per_s,
    )
    return summary


def read_manifest(store: ObjectStore, key: str) -> list[ManifestLine] | None:
    found = store.get(key)
    return None if found is None else list(parse_manifest(found[0]))


@dataclass(frozen=True)
class StoredCheck:
    """A job's stored objects: its result when every one verifies, else why not."""

    result: JobResult | None
    problem: str | None


def verify_stored(
    store: ObjectStore,
    prefix: str,
    job: Job,
    also: Callable[[JobResult], str | None] | None = None,
) -> StoredCheck:
    """The job's result.json, when it is this job's (id, prompt, steps, seeds; ``also``
    may add a check, e.g. the model) and every image it lists is at the job's key with the
    sha256 and size it names."""
    found = store.get(result_key(prefix, job.job_id, job.output_prefix))
    if found is None:
        return StoredCheck(None, NO_RESULT)
    try:
        result = JobResult.model_validate_json(found[0])
    except ValidationError as e:
        return StoredCheck(None, f"its result.json does not parse ({e.error_count()} error(s))")
    problem = _mismatch(result, job) or (also(result) if also is not None else None)
    for image in result.images:
        if problem is not None:
            break
        if image.key != image_key(prefix, job.job_id, image.index, job.output_prefix):
            problem = f"image {image.index} has the key {image.key}"
            continue
        got = store.get(image.key)
        if got is None:
            problem = f"image {image.key} is missing"
        elif len(got[0]) != image.bytes or hashlib.sha256(got[0]).hexdigest() != image.sha256:
            problem = f"image {image.key} does not match its sha256 or size"
    return StoredCheck(result if problem is None else None, problem)


def _mismatch(result: JobResult, job: Job) -> str | None:
    if result.job_id != job.job_id or result.prompt != job.prompt or result.steps != job.steps:
        return "it is another job's (id, prompt or steps differ)"
    if [i.index for i in result.images] != list(range(job.num_images)):
        return f"it lists {len(result.images)} image(s), the job asks for {job.num_images}"
    if [i.seed for i in result.images] != [job.image_seed(i) for i in range(job.num_images)]:
        return "its seeds are not the job's"
    return None
