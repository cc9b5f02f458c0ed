"""Output prefixes, the batch manifest's lines and summary, the stored-objects check, and the
bulk file's two streamed passes (bounded memory)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from lcm_fleet.batch_manifest import (
    NO_RESULT,
    batch_lines,
    manifest_body,
    parse_manifest,
    summarise,
    verify_stored,
)
from lcm_fleet.contract import Job, JobResult, JobState, parse_job
from lcm_fleet.errors import InvalidJob
from lcm_fleet.keys import batch_manifest_key, image_key, job_prefix, result_key
from lcm_fleet.records import BatchCounts, BatchRecord, JobRecord
from lcm_fleet.storage import ObjectStore
from producer.bulk import check_jobs_file, iter_rows, read_jobs_file, row_seed
from tests.results import make_stored_result


def test_an_output_prefix_moves_a_jobs_objects_and_none_keeps_todays_layout():
    assert job_prefix("p", "j") == "p/jobs/j/"
    assert image_key("", "j", 3) == "jobs/j/003.png" and result_key("", "j") == "jobs/j/result.json"
    assert image_key("p/", "j", 0, "cat/2026") == "p/cat/2026/j/000.png"
    assert result_key("", "j", "cat") == "cat/j/result.json"
    assert batch_manifest_key("p", "b1") == "p/batches/b1/manifest.jsonl"
    assert batch_manifest_key("", "b1", "cat/x") == "cat/x/manifest.jsonl"
    job = Job(prompt="x", seed=1, job_id="j")
    # No prefix: the job serialises byte for byte as before the field existed.
    assert "output_prefix" not in job.model_dump_json() and "output_prefix" not in job.model_dump()
    assert Job(prompt="x", job_id="j", output_prefix="a/b/").output_prefix == "a/b"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("/abs", "drop the leading '/'"),
        ("a/../b", "'..' segments"),
        ("a//b", "empty segments"),
        ("a b", "should match pattern"),
        ("x" * 201, "at most 200"),
        ("", "should match pattern"),
    ],
)
def test_a_bad_output_prefix_is_named_with_its_value_and_the_rule(value, says):
    with pytest.raises(InvalidJob) as e:
        parse_job({"prompt": "x", "output_prefix": value})
    assert "field 'output_prefix'" in str(e.value) and says in str(e.value)
    assert "not starting with '/'" in str(e.value)  # the allowed form


def _result(job: Job, store: ObjectStore, prefix: str = "") -> JobResult:
    def put(key: str, data: bytes) -> str:
        store.put(key, data, "image/png")
        return store.uri(key)

    result = make_stored_result(job, put, prefix=prefix, output_prefix=job.output_prefix)
    body = result.model_dump_json().encode()
    store.put(result_key(prefix, job.job_id, job.output_prefix), body, "application/json")
    return result


def test_a_stored_row_verifies_only_with_every_image_at_its_sha256(fake_s3):
    store = ObjectStore(fake_s3(), "bucket")
    job = Job(prompt="a cube", job_id="b-000001", seed=5, num_images=2, output_prefix="cat")
    assert verify_stored(store, "", job).problem == NO_RESULT
    result = _result(job, store)
    assert verify_stored(store, "", job).result == result
    other_seed = job.model_copy(update={"seed": 6})
    assert verify_stored(store, "", other_seed).problem == "its seeds are not the job's"
    store.put(result.images[1].key, b"changed", "image/png")
    assert "does not match its sha256" in str(verify_stored(store, "", job).problem)
    store.client.objects.pop(result.images[1].key)
    assert "is missing" in str(verify_stored(store, "", job).problem)


class _Records:
    """What batch_lines reads: the job list (with a resubmitted id twice) and records."""

    def __init__(self, records: dict[str, JobRecord | None], order: list[str]) -> None:
        self.records, self.order = records, order

    def batch_job_ids(self, batch_id, offset=0, limit=100):
        return self.order[offset : offset + limit]

    def get_jobs(self, ids):
        return [self.records.get(i) for i in ids]


def test_the_manifest_has_one_line_per_row_in_file_order_and_a_summary(fake_s3):
    store = ObjectStore(fake_s3(), "bucket")
    ok = Job(prompt="ok", job_id="b-000004", seed=1, num_images=2)
    bad = Job(prompt="bad", job_id="b-000002", seed=2)
    result = _result(ok, store)
    base = {"owner": "local", "batch_id": "b", "created_at": 100.0, "updated_at": 101.0}
    records = {
        ok.job_id: JobRecord(
            job_id=ok.job_id, state=JobState.SUCCEEDED, job=ok, result=result, row=4,
            finished_at=110.0, **base,
        ),
        bad.job_id: JobRecord(
            job_id=bad.job_id, state=JobState.FAILED, job=bad, reason="RenderError: boom",
            row=2, partial_keys=("jobs/b-000002/000.png",), finished_at=103.0, **base,
        ),
        "gone": None,
    }  # fmt: skip
    order = [ok.job_id, bad.job_id, ok.job_id, "gone"]
    lines = batch_lines(_Records(records, order), "b", "")  # type: ignore[arg-type]
    assert [(line.row, line.job_id, line.state) for line in lines] == [
        (2, bad.job_id, JobState.FAILED),
        (3, "gone", None),
        (4, ok.job_id, JobState.SUCCEEDED),
    ]
    failed, gone, done = lines
    assert failed.reason == "RenderError: boom" and failed.partial_keys == ["jobs/b-000002/000.png"]
    assert failed.images == [] and failed.result_key is None
    assert gone.reason == "record expired"
    assert [i.sha256 for i in done.images] == [i.sha256 for i in result.images]
    assert done.result_key == "jobs/b-000004/result.json" and done.durations_s == {"total": 0.5}
    assert done.elapsed_s == 10.0 and done.seed == 1 and done.reason is None
    assert list(parse_manifest(manifest_body(lines))) == lines
    batch = BatchRecord(
        batch_id="b", owner="local", created_at=100.0, finished_at=120.0, total=3, sealed=True,
        counts=BatchCounts(succeeded=1, failed=1),
    )  # fmt: skip
    summary = summarise(batch, lines, "batches/b/manifest.jsonl", now=121.0)
    assert summary.counts == BatchCounts(succeeded=1, failed=1)
    assert (summary.rows, summary.images, summary.wall_s, summary.images_per_s) == (3, 2, 20, 0.1)


def _rows_file(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        for n in range(rows):
            f.write(json.dumps({"prompt": f"a prompt of row {n}, " + "x" * 200}) + "\n")
    return path


def test_rows_without_a_seed_get_the_same_seed_on_every_submission_of_the_batch(tmp_path):
    f = _rows_file(tmp_path / "r.jsonl", 3)
    first, again = read_jobs_file(f), read_jobs_file(f)
    assert [r.job.seed for r in first.rows] == [r.job.seed for r in again.rows]
    assert first.rows[1].job.seed == row_seed(first.batch_id, 2)
    other = read_jobs_file(f, batch_id="another")
    assert [r.job.seed for r in other.rows] != [r.job.seed for r in first.rows]


def test_an_explicit_id_of_another_lines_default_form_is_refused(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b", "job_id": "b1-000001"}\n')
    with pytest.raises(InvalidJob, match="line 2: field 'job_id' got 'b1-000001', the default"):
        read_jobs_file(f, batch_id="b1")


def test_a_file_changed_between_the_passes_is_refused(tmp_path):
    f = _rows_file(tmp_path / "r.jsonl", 3)
    checked = check_jobs_file(f)
    f.write_text(f.read_text() + '{"prompt": "one more"}\n')
    with pytest.raises(InvalidJob, match="changed while it was submitted"):
        list(iter_rows(checked))


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        checked = check_jobs_file(path)
        for _ in iter_rows(checked):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checking_and_reading_a_file_holds_no_more_for_three_times_the_rows(tmp_path):
    # Both files are over the 1 MiB block the batch id's digest reads at a time.
    small = _peak_bytes(_rows_file(tmp_path / "small.jsonl", 5_000))
    large = _peak_bytes(_rows_file(tmp_path / "large.jsonl", 15_000))
    # The rows' jobs alone would be ~6 MB at 15,000 rows; what is held stays flat.
    assert large < small * 1.1, (small, large)
