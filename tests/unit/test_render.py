import pytest

from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from worker.render.images import render


def test_one_seeded_call_per_image(fake_pipeline):
    pipe = fake_pipeline()
    job = Job(prompt="a cat", seed=10, num_images=3, steps=2, guidance_scale=5.0)
    out = render(job, pipe)
    assert [c[1] for c in pipe.calls] == [10, 11, 12]
    assert [i.seed for i in out.images] == [10, 11, 12]
    assert all(c[2] == 2 and c[3] == 5.0 for c in pipe.calls)
    assert out.durations.unet == pytest.approx(0.3)
    assert out.durations.text_encoder == pytest.approx(0.03)
    assert (out.width, out.height) == (64, 64)


def test_size_defaults_to_compiled_and_mismatch_is_invalid(fake_pipeline):
    pipe = fake_pipeline(64, 128)
    assert render(Job(prompt="x", width=64, height=128), pipe).height == 128
    with pytest.raises(InvalidJob, match="serves 64x128"):
        render(Job(prompt="x", width=512, height=512), pipe)
    assert len(pipe.calls) == 1


def test_guidance_defaults_to_the_model_and_is_recorded(fake_pipeline):
    out = render(Job(prompt="x"), fake_pipeline(guidance_scale=8.0))
    assert out.guidance_scale == 8.0
    pipe = fake_pipeline(guidance_scale=1.0, cfg=True)
    assert render(Job(prompt="x"), pipe).guidance_scale == 1.0
    assert pipe.calls[0][3] == 1.0


def test_embedding_model_takes_any_guidance(fake_pipeline):
    assert render(Job(prompt="x", guidance_scale=3.0), fake_pipeline()).guidance_scale == 3.0


def test_cfg_model_refuses_the_other_guidance_regime(fake_pipeline):
    with pytest.raises(
        InvalidJob, match=r"field 'guidance_scale' got 3.0.*send a value exactly 1.0"
    ):
        render(Job(prompt="x", guidance_scale=3.0), fake_pipeline(guidance_scale=1.0, cfg=True))
    with pytest.raises(InvalidJob, match=r"got 1.0.*send a value above 1.0"):
        render(Job(prompt="x", guidance_scale=1.0), fake_pipeline(guidance_scale=2.0, cfg=True))
    assert render(Job(prompt="x", guidance_scale=1.5), fake_pipeline(guidance_scale=2.0, cfg=True))
