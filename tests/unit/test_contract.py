import json
import re

import pytest

from lcm_fleet.contract import (
    QUOTE_MAX_CHARS,
    SEED_MAX,
    STEPS_DEFAULT,
    Job,
    job_fields_from_text,
    parse_job,
    quote,
)
from lcm_fleet.errors import InvalidJob
from lcm_fleet.keys import image_key, job_prefix, normalise_prefix, result_key


def test_defaults_are_recorded():
    job = parse_job({"prompt": "a red fox"})
    assert job.steps == STEPS_DEFAULT
    assert 0 <= job.seed <= SEED_MAX
    assert len(job.job_id) == 32
    assert job.width is None and job.height is None
    # The random seed is part of the job, so the record says which seed was used.
    assert parse_job(job.model_dump()).seed == job.seed


def test_random_seeds_differ():
    assert len({parse_job({"prompt": "x"}).seed for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("steps", 12, "from 1 to 8"),
        ("steps", 0, "from 1 to 8"),
        ("width", 513, "multiple of 8"),
        ("height", 32, "multiple of 8 from 64"),
        ("guidance_scale", 0.5, "from 1.0 to 20.0 (default: the model"),
        ("num_images", 9, "from 1 to 8"),
        ("seed", -1, f"from 0 to {SEED_MAX}"),
        ("seed", SEED_MAX + 1, f"from 0 to {SEED_MAX}"),
        ("prompt", "", "non-empty"),
        ("prompt", "   ", "non-empty"),
        ("job_id", "../etc", "letters, digits"),
    ],
)
def test_invalid_field_names_field_value_and_range(field, value, expect):
    payload = {"prompt": "a cat", field: value}
    with pytest.raises(InvalidJob) as info:
        parse_job(payload)
    message = str(info.value)
    assert f"field '{field}'" in message
    assert repr(value) in message
    assert expect in message


def test_unknown_field_is_named():
    with pytest.raises(InvalidJob, match="field 'stpes' is not part of a job; known fields"):
        parse_job({"prompt": "a cat", "stpes": 3})


def test_missing_prompt():
    with pytest.raises(InvalidJob, match="field 'prompt' is required"):
        parse_job({"steps": 3})


@pytest.mark.parametrize("payload", ["a cat", 5, None, ["prompt"]])
def test_non_object_payload(payload):
    with pytest.raises(InvalidJob, match="must be a JSON object"):
        parse_job(payload)


def test_all_errors_reported_at_once():
    with pytest.raises(InvalidJob) as info:
        parse_job({"prompt": "x", "steps": 99, "width": 100})
    assert "'steps'" in str(info.value) and "'width'" in str(info.value)


def test_image_seeds_wrap():
    job = Job(prompt="x", seed=SEED_MAX, num_images=3)
    assert [job.image_seed(i) for i in range(3)] == [SEED_MAX, 0, 1]


def test_key_layout_is_deterministic():
    assert image_key("", "job1", 0) == "jobs/job1/000.png"
    assert image_key("team/a/", "job1", 12) == "team/a/jobs/job1/012.png"
    assert result_key("/x/", "j") == "x/jobs/j/result.json"
    assert job_prefix("x", "j") == "x/jobs/j/"
    assert image_key("p", "j", 1) == image_key("p/", "j", 1)


def test_prefix_rejects_odd_characters():
    with pytest.raises(ValueError, match="may hold only"):
        normalise_prefix("a b")


def test_width_and_height_come_together():
    with pytest.raises(InvalidJob, match=r"field 'width'/'height': give both or neither"):
        parse_job({"prompt": "x", "width": 512})


def test_sized_jobs_go_to_their_size_class_queue():
    from lcm_fleet.contract import queue_for

    assert queue_for(parse_job({"prompt": "x"}), "lcm.render") == "lcm.render"
    sized = parse_job({"prompt": "x", "width": 512, "height": 768})
    assert queue_for(sized, "lcm.render") == "lcm.render.512x768"


# ---------------------------------------------------------------- inputs bounded and clean


def test_a_long_bad_value_is_quoted_by_a_short_prefix_and_its_length():
    with pytest.raises(InvalidJob) as info:
        parse_job({"prompt": "x" * 5000})
    message = str(info.value)
    assert "(5000 characters)" in message and "at most 2000 characters" in message
    assert "x" * (QUOTE_MAX_CHARS + 1) not in message
    assert len(message) < 400
    with pytest.raises(InvalidJob) as info:
        parse_job({"prompt": "a cat", "steps": "9" * 10_000_000})
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("payload", [list(range(1_000_000)), "y" * 1_000_000, {"a"}])
def test_a_large_non_object_payload_is_quoted_short(payload):
    with pytest.raises(InvalidJob, match="must be a JSON object") as info:
        parse_job(payload)
    assert len(str(info.value)) < 400


def test_quote_keeps_short_values_whole_and_cuts_long_ones():
    assert quote("a cat") == "'a cat'"
    assert quote(12) == "12"
    assert quote("é" * 100) == repr("é" * QUOTE_MAX_CHARS) + "... (100 characters)"
    assert quote(b"\x00" * 100).endswith("... (100 bytes)")
    assert len(quote({"k": list(range(10**5))})) <= 2 * QUOTE_MAX_CHARS + 3


@pytest.mark.parametrize(
    ("char", "name"),
    [
        ("\x00", "U+0000 (NUL)"),
        ("\x1b", "U+001B (ESC)"),
        ("\x07", "U+0007 (BEL)"),
        ("\x01", "U+0001"),
        ("\x7f", "U+007F (DEL)"),
        ("\x85", "U+0085"),
        ("\x9b", "U+009B"),
    ],
)
def test_control_characters_in_a_prompt_are_refused_naming_the_field(char, name):
    with pytest.raises(InvalidJob) as info:
        parse_job({"prompt": f"a cat{char}[31m"})
    message = str(info.value)
    assert "field 'prompt'" in message and name in message and "at position 5" in message
    assert char not in message  # quoted escaped, never raw
    assert "without control characters" in message


def test_a_lone_surrogate_in_a_prompt_is_refused():
    with pytest.raises(InvalidJob, match=r"field 'prompt' got 'a cat\\ud800'"):
        parse_job({"prompt": "a cat\ud800"})


def test_tabs_and_line_breaks_and_other_text_are_kept():
    prompt = "a cat,\tsitting\non a mat\r\n: 猫 über café — ☕"
    assert parse_job({"prompt": prompt}).prompt == prompt


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", True),
        ("seed", False),
        ("steps", True),
        ("num_images", True),
        ("width", True),
        ("seed", "42"),
        ("steps", 4.0),
        ("guidance_scale", True),
        ("guidance_scale", "8"),
        ("prompt", b"a cat"),
    ],
)
def test_strict_types_a_bool_is_not_a_number(field, value):
    payload = {"prompt": "a cat", "width": 64, "height": 64, field: value}
    with pytest.raises(InvalidJob, match=f"field '{field}' got {re.escape(repr(value))}"):
        parse_job(payload)


def test_ints_are_numbers_for_guidance_and_the_wire_format_is_unchanged():
    job = parse_job({"prompt": "a cat", "guidance_scale": 8, "seed": 7, "width": 64, "height": 64})
    assert job.guidance_scale == 8.0
    wire = job.model_dump(mode="json")
    assert parse_job(json.loads(json.dumps(wire))) == job


def test_text_cells_become_numbers_and_bad_text_is_named():
    cells = {"prompt": "a cat", "seed": "42", "steps": "2", "guidance_scale": "7.5"}
    job = parse_job(job_fields_from_text(cells))
    assert (job.seed, job.steps, job.guidance_scale) == (42, 2, 7.5)
    with pytest.raises(InvalidJob, match="field 'steps' got 'four'"):
        parse_job(job_fields_from_text({"prompt": "a cat", "steps": "four"}))
    with pytest.raises(InvalidJob, match=r"field 'seed' got '1\.5'"):
        parse_job(job_fields_from_text({"prompt": "a cat", "seed": "1.5"}))


def test_bulk_jobs_go_to_the_bulk_queue_beside_their_size_class() -> None:
    from lcm_fleet.contract import JobClass, class_queue, interactive_queue, queue_for

    sized = Job(prompt="a red circle", width=64, height=64)
    unsized = Job(prompt="a red circle")
    assert queue_for(sized, "lcm.render") == "lcm.render.64x64"
    assert queue_for(sized, "lcm.render", JobClass.BULK) == "lcm.render.64x64.bulk"
    assert queue_for(unsized, "lcm.render", JobClass.BULK) == "lcm.render.bulk"
    assert interactive_queue("lcm.render.64x64.bulk") == "lcm.render.64x64"
    assert interactive_queue(class_queue("q", JobClass.INTERACTIVE)) == "q"
