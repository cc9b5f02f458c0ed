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
