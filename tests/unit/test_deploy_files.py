"""The deploy manifests parse and agree with the code's names."""

from pathlib import Path

import yaml

from lcm_fleet.contract import QUEUE_RENDER
from worker.render.sizes import parse_sizes

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_manifests_parse_and_match_the_code():
    config, secret = _docs("config.yaml")
    assert config["data"]["LCM_QUEUE"] == QUEUE_RENDER
    assert parse_sizes(config["data"]["LCM_SIZES"])  # the worker's own parser accepts it
    assert float(config["data"]["LCM_MEMORY_BUDGET_GIB"]) > 0
    assert set(secret["stringData"]) == {"LCM_S3_ACCESS_KEY_ID", "LCM_S3_SECRET_ACCESS_KEY"}
    (deployment,) = _docs("worker.yaml")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > int(config["data"]["LCM_TASK_TIME_LIMIT_S"])
    (scaled,) = _docs("keda.yaml")
    assert scaled["spec"]["triggers"][0]["metadata"]["listName"] == QUEUE_RENDER
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
