"""How the one genai wrapper compiles: devices and properties, the same for every caller."""

from lcm_fleet.artifact.kinds import InferencePrecision
from worker.render.pipeline import CompileOptions


def test_default_options_set_no_property():
    assert CompileOptions().config() == {}
    assert CompileOptions().devices() == ("CPU",)


def test_precision_cache_and_cpu_properties():
    options = CompileOptions(
        cache_dir="/cache", precision=InferencePrecision.F32, cpu_threads=2, cpu_pinning=False
    )
    assert options.config() == {
        "CACHE_DIR": "/cache",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": 2,
        "ENABLE_CPU_PINNING": False,
    }
    # The hint goes to OpenVINO as plain text, whether given as the enum or its value.
    assert type(options.config()["INFERENCE_PRECISION_HINT"]) is str
    assert CompileOptions(precision="default").config() == {}


def test_cpu_threads_and_pinning_only_on_cpu():
    options = CompileOptions(
        device="GPU", cpu_threads=2, cpu_pinning=True, text_encoder_device="CPU"
    )
    assert options.config() == {}
    assert options.devices() == ("CPU", "GPU", "GPU")


def test_snippets_off_sets_the_cpu_property():
    assert CompileOptions(snippets_off=True).config() == {"SNIPPETS_MODE": "DISABLE"}
    assert CompileOptions(device="GPU", snippets_off=True).config() == {}


def test_a_snippets_failure_compiles_again_without_snippets(monkeypatch, tmp_path):
    """OpenVINO 2026.4.1 cannot compile the reference UNet for one thread per stream with its
    snippets code generator; the pipeline compiles a new one with SNIPPETS_MODE=DISABLE."""
    from worker.render import pipeline as module

    built: list[CompileOptions] = []

    def build(self, path, options, decryptor, model_sha256):
        built.append(options)
        if not options.snippets_off:
            raise RuntimeError(f"Check failed: {module.SNIPPETS_FAILURE} to perform assignment")
        return object()

    monkeypatch.setattr(module.GenaiPipeline, "_build", build)
    pipe = module.GenaiPipeline.for_folder(
        tmp_path, 64, 64, 8.0, options=CompileOptions(cpu_threads=1)
    )
    assert [o.snippets_off for o in built] == [False, True]
    assert pipe.options.snippets_off and pipe.options.cpu_threads == 1


def test_other_compile_failures_are_not_retried(monkeypatch, tmp_path):
    import pytest

    from worker.errors import ModelLoadError
    from worker.render import pipeline as module

    calls: list[int] = []

    def build(self, path, options, decryptor, model_sha256):
        calls.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(module.GenaiPipeline, "_build", build)
    with pytest.raises(ModelLoadError, match="out of memory"):
        module.GenaiPipeline.for_folder(tmp_path, 64, 64, 8.0)
    assert calls == [1]
