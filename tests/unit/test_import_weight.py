"""The producer imports nothing heavy or of the worker; the worker never needs torch."""

import subprocess
import sys

HEAVY = ("torch", "diffusers", "nncf", "optimum", "transformers")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_producer_is_light():
    loaded = _loaded_after(
        "import producer, producer.cli, producer.api, producer.download, producer.http.app, "
        "producer.http.cli"
    )
    assert not loaded & {"worker", "model_build", "openvino", "openvino_genai", *HEAVY}


def test_worker_loads_no_torch_diffusers_or_nncf():
    loaded = _loaded_after(
        "import worker.cli, worker.consumer.tasks, worker.render.pipeline, worker.consumer.app"
    )
    assert not loaded & set(HEAVY)
    # ...and does not load OpenVINO at import time either: the pipeline is built per process.
    assert "openvino_genai" not in loaded


def test_manifest_module_is_light():
    loaded = _loaded_after("import lcm_fleet.artifact.manifest")
    assert not loaded & {"openvino", "numpy", *HEAVY}
