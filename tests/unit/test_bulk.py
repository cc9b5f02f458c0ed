"""Bulk files: every row checked before anything is queued; ids stable per file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcm_fleet.contract import JobClass
from lcm_fleet.errors import InvalidJob
from producer.bulk import batch_id_of, read_jobs_file


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_rows_get_defaults_and_ids_from_the_file_and_line(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        '{"prompt": "a red cube", "seed": 3}\n\n{"prompt": "a blue ball", "steps": 2}\n',
    )
    bulk = read_jobs_file(f, defaults={"steps": 6, "num_images": 2})
    assert [r.line for r in bulk.rows] == [1, 3]
    first, second = (r.job for r in bulk.rows)
    assert (first.prompt, first.seed, first.steps, first.num_images) == ("a red cube", 3, 6, 2)
    assert (second.steps, second.num_images) == (2, 2)  # the row wins over the default
    assert bulk.batch_id == batch_id_of(f.read_bytes())
    assert first.job_id == f"{bulk.batch_id}-000001" and second.job_id.endswith("-000003")
    # The same bytes give the same ids; another file gives others.
    assert read_jobs_file(f).rows[0].job.job_id == first.job_id
    other = _write(tmp_path / "q.jsonl", '{"prompt": "a red cube", "seed": 4}\n')
    assert read_jobs_file(other).rows[0].job.job_id != first.job_id


def test_csv_header_names_fields_and_empty_cells_are_not_given(tmp_path):
    f = _write(
        tmp_path / "p.csv",
        'prompt,seed,width,height\n"a cat, sitting",7,,\na dog,,256,256\n',
    )
    bulk = read_jobs_file(f, batch_id="run42")
    (cat, dog) = (r.job for r in bulk.rows)
    assert cat.prompt == "a cat, sitting" and cat.seed == 7 and cat.width is None
    assert (dog.width, dog.height) == (256, 256)
    assert [r.job.job_id for r in bulk.rows] == ["run42-000002", "run42-000003"]


def test_every_bad_row_is_named_and_nothing_is_accepted(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        "\n".join(
            [
                json.dumps({"prompt": "fine"}),
                json.dumps({"prompt": "too many", "steps": 12}),
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"prompt": "typo", "sed": 1}),
                json.dumps({"prompt": "dup", "job_id": "x1"}),
                json.dumps({"prompt": "dup again", "job_id": "x1"}),
            ]
        ),
    )
    with pytest.raises(InvalidJob) as e:
        read_jobs_file(f)
    text = str(e.value)
    assert "5 of 7 row(s) are invalid; nothing was submitted" in text
    assert "line 2: field 'steps' got 12" in text and "allowed: an integer from 1 to 8" in text
    assert "line 3: not valid JSON" in text
    assert "line 4: a row must be a JSON object, got list" in text
    assert "line 5: field 'sed' is not part of a job" in text
    assert "line 7: field 'job_id' got 'x1', already used on line 6" in text


def test_skip_invalid_returns_the_rejects_beside_the_accepted_rows(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        '{"prompt": "ok"}\n{"prompt": "", "seed": 1}\n{"prompt": "also ok"}\n',
    )
    bulk = read_jobs_file(f, skip_invalid=True)
    assert [r.line for r in bulk.rows] == [1, 3]
    assert [r.line for r in bulk.rejected] == [2]
    assert "field 'prompt'" in bulk.rejected[0].reason


def test_file_level_mistakes_say_how_to_fix_them(tmp_path):
    with pytest.raises(InvalidJob, match=r"name the file \*\.jsonl or \*\.csv"):
        read_jobs_file(_write(tmp_path / "p.txt", "a prompt\n"))
    with pytest.raises(InvalidJob, match=r"'promt'.*may name: job_id, prompt"):
        read_jobs_file(_write(tmp_path / "h.csv", "promt,seed\na,1\n"))
    with pytest.raises(InvalidJob, match="holds no rows"):
        read_jobs_file(_write(tmp_path / "e.jsonl", "\n\n"))
    with pytest.raises(InvalidJob, match="more cell"):
        read_jobs_file(_write(tmp_path / "w.csv", "prompt\na,b\n"))
    with pytest.raises(InvalidJob, match="cannot read the jobs file"):
        read_jobs_file(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidJob, match="same id"):
        read_jobs_file(_write(tmp_path / "d.jsonl", '{"prompt": "a"}\n'), defaults={"job_id": "a"})


def test_a_broker_failure_part_way_names_what_was_queued_and_where_to_resume(tmp_path, monkeypatch):
    import producer.bulk as bulk_module
    from producer.bulk import BulkSubmitError, submit_rows
    from producer.errors import SubmitError

    f = _write(tmp_path / "p.jsonl", "".join(f'{{"prompt": "p{i}"}}\n' for i in range(4)))
    rows = read_jobs_file(f, batch_id="b").rows
    sent: list[str] = []

    def fake_submit_job(job, settings=None, queue=None, **record):
        if len(sent) == 2:
            raise SubmitError("could not reach the broker")
        sent.append(job.job_id)
        return type("H", (), {"job_id": job.job_id})()

    monkeypatch.setattr(bulk_module, "submit_job", fake_submit_job)
    monkeypatch.setattr(bulk_module, "check_served", lambda jobs, settings, queue, job_class: None)
    with pytest.raises(BulkSubmitError) as e:
        submit_rows(rows, settings=object())  # type: ignore[arg-type]
    assert [h.job_id for h in e.value.submitted] == ["b-000001", "b-000002"]
    assert e.value.next_line == 3
    assert "2 of 4 job(s) were queued" in str(e.value) and "from line 3" in str(e.value)


def test_submit_file_checks_the_whole_file_then_queues_every_row(tmp_path, monkeypatch):
    import producer.bulk as bulk_module
    from producer.bulk import submit_file

    sent: list[tuple[str, int, int | None]] = []

    def fake_submit_job(job, settings=None, queue=None, **record):
        # A bulk file's jobs are bulk, and their sizes were checked once, for the whole file.
        assert record["job_class"] is JobClass.BULK and record["served_checked"] is True
        sent.append((job.job_id, job.steps, record.get("row")))
        return type("H", (), {"job_id": job.job_id})()

    class NoRecords:  # the batch record is tested on the real Redis (test_bulk_submit.py)
        def get_batch(self, batch_id):
            return None

        def create_batch(self, *args, **kwargs):
            pass

        def get_jobs(self, ids):
            return [None] * len(ids)

        def seal_batch(self, batch_id):
            return False

    class NothingStored:  # the resume's checks run on the real S3 (test_batch_resume.py)
        def folders_between(self, prefix, after, last):
            return set()

        def get(self, key):
            return None

    class Settings:
        s3_prefix = ""

    monkeypatch.setattr(bulk_module, "submit_job", fake_submit_job)
    monkeypatch.setattr(bulk_module, "cached_records", lambda settings: NoRecords())
    monkeypatch.setattr(bulk_module, "result_store", lambda settings: NothingStored())
    monkeypatch.setattr(bulk_module, "check_served", lambda jobs, settings, queue, job_class: None)
    bad = _write(tmp_path / "bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "steps": 0}\n')
    with pytest.raises(InvalidJob, match="line 2"):
        submit_file(bad, settings=Settings())  # type: ignore[arg-type]
    assert sent == []
    good = _write(tmp_path / "good.jsonl", '{"prompt": "a"}\n\n{"prompt": "b", "steps": 2}\n')
    report = submit_file(good, settings=Settings(), defaults={"steps": 5}, batch_id="g")  # type: ignore[arg-type]
    assert sent == [("g-000001", 5, 1), ("g-000003", 2, 3)]
    assert (report.queued, report.stored, report.in_flight) == (2, 0, 0)
