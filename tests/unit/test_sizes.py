"""Size classes: parsing LCM_SIZES, the settings rules, routing jobs to their pipeline."""

import pytest
from pydantic import ValidationError

from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from worker.cli import settings_error
from worker.render.images import render
from worker.render.sizes import PipelineSet, parse_sizes, queues_for
from worker.settings import WorkerSettings

REQUIRED = {
    "LCM_MODEL_DIR": "/models/a",
    "LCM_S3_ACCESS_KEY_ID": "key",
    "LCM_S3_SECRET_ACCESS_KEY": "secret",
}


@pytest.fixture
def env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LCM_"):
            monkeypatch.delenv(name)
    for k, v in REQUIRED.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_parse_sizes():
    assert parse_sizes("512x512, 768X512,") == ((512, 512), (768, 512))
    assert parse_sizes([(64, 128), "128x64"]) == ((64, 128), (128, 64))
    assert parse_sizes("") == () and parse_sizes(None) == ()
    with pytest.raises(ValueError, match="'512' is not WIDTHxHEIGHT"):
        parse_sizes("512")
    with pytest.raises(ValueError, match="500x512: each side must be a multiple of 8"):
        parse_sizes("500x512")
    with pytest.raises(ValueError, match="4096x512"):
        parse_sizes("4096x512")
    with pytest.raises(ValueError, match="512x512 is listed twice"):
        parse_sizes("512x512,512x512")


def test_settings_sizes_and_budget(env):
    env.setenv("LCM_SIZES", "512x512,768x512")
    env.setenv("LCM_MEMORY_BUDGET_GIB", "7.5")
    s = WorkerSettings()
    assert s.size_classes() == [(512, 512), (768, 512)] and s.memory_budget_gib == 7.5


def test_single_width_height_still_works(env):
    env.setenv("LCM_WIDTH", "768")
    env.setenv("LCM_HEIGHT", "512")
    assert WorkerSettings().size_classes() == [(768, 512)]
    env.delenv("LCM_WIDTH")
    env.delenv("LCM_HEIGHT")
    assert WorkerSettings().size_classes() is None  # the artifact's own shape


def test_several_sizes_need_a_budget(env):
    env.setenv("LCM_SIZES", "512x512,768x512")
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    message = settings_error(info.value)
    assert "LCM_SIZES=512x512,768x512 keeps 2 compiled pipelines" in message
    assert "set LCM_MEMORY_BUDGET_GIB" in message
    env.setenv("LCM_SIZES", "512x512")
    assert WorkerSettings().size_classes() == [(512, 512)]  # one size needs none


def test_sizes_and_width_height_are_exclusive(env):
    env.setenv("LCM_SIZES", "512x512")
    env.setenv("LCM_WIDTH", "512")
    env.setenv("LCM_HEIGHT", "512")
    with pytest.raises(ValidationError, match="set LCM_SIZES or LCM_WIDTH/LCM_HEIGHT, not both"):
        WorkerSettings()


def test_bad_size_names_the_variable_and_value(env):
    env.setenv("LCM_SIZES", "512x512,777x512")
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    message = settings_error(info.value)
    assert "LCM_SIZES: size 777x512: each side must be a multiple of 8" in message
    assert "'512x512,777x512'" in message


def test_queues_cover_every_size():
    assert queues_for("lcm.render", [(512, 512), (768, 512)]) == [
        "lcm.render",
        "lcm.render.512x512",
        "lcm.render.768x512",
        "lcm.render.bulk",
        "lcm.render.512x512.bulk",
        "lcm.render.768x512.bulk",
    ]


def test_jobs_are_routed_to_the_pipeline_of_their_size(fake_pipeline):
    small, wide = fake_pipeline(64, 64), fake_pipeline(128, 64)
    pipes = PipelineSet({(64, 64): small, (128, 64): wide}, default=(128, 64))
    assert pipes.sizes == [(128, 64), (64, 64)]
    unsized = Job(prompt="x", seed=1)
    out = render(unsized, pipes.for_job(unsized))
    assert out.images[0].pixels.shape == (64, 128, 3)  # unsized: the default, 128x64
    job = Job(prompt="x", width=64, height=64, seed=1)
    with pytest.raises(InvalidJob, match="serves 128x64"):
        render(job, wide)  # the render check still refuses a mismatched pipeline
    out = render(job, pipes.for_job(job))
    assert out.images[0].pixels.shape == (64, 64, 3) and (out.width, out.height) == (64, 64)
    assert len(small.calls) == 1 and len(wide.calls) == 1


def test_unserved_size_is_invalid_with_the_served_sizes(fake_pipeline):
    pipes = PipelineSet({(64, 64): fake_pipeline(64, 64)}, default=(64, 64))
    job = Job(prompt="x", width=256, height=256)
    assert pipes.size_of(job) == (256, 256)
    with pytest.raises(InvalidJob, match=r"got 256x256; this worker's model serves 64x64"):
        pipes.for_job(job)
