import pytest

from lcm_fleet.contract import SEED_MAX, STEPS_DEFAULT, Job, parse_job
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
