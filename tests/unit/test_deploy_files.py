"""The deploy manifests parse and agree with the code's names."""

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
    auth, scaled = _docs("keda.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # One metrics-api trigger on lcm-api's GET /v1/queues, for the sizes the Deployment serves
    # (the ConfigMap's LCM_SIZES), the unsized family included: its first size takes those.
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api" and trigger["metadata"]["valueLocation"] == "total"
    url = urlsplit(trigger["metadata"]["url"])
    (service,) = [d for d in _docs("api.yaml") if d["kind"] == "Service"]
    assert url.path == "/v1/queues" and url.hostname.split(".")[0] == service["metadata"]["name"]
    query = parse_qs(url.query)
    assert query["size"] == config["data"]["LCM_SIZES"].split(",")
    assert query["unsized"] == ["true"]
    assert auth["kind"] == "TriggerAuthentication"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"]["authMode"] == "bearer"
    assert [r["parameter"] for r in auth["spec"]["secretTargetRef"]] == ["token"]


def test_api_manifests_run_the_console_scripts_with_the_pepper():
    pyproject = (K8S.parents[1] / "pyproject.toml").read_text()  # tomllib is 3.11+
    scripts = pyproject.split("[project.scripts]")[1].split("\n[")[0]
    secret, api, service, webhooks = _docs("api.yaml")
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == {"LCM_API_KEY_PEPPER"}
    for deployment, script in ((api, "lcm-api"), (webhooks, "lcm-webhooks")):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][0] == script and f"\n{script} = " in scripts
        refs = {r.get("secretRef", r.get("configMapRef"))["name"] for r in container["envFrom"]}
        assert refs == {"lcm-fleet", "lcm-fleet-s3", secret["metadata"]["name"]}
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels
    (container,) = api["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert int(env["LCM_API_PORT"]) == port["containerPort"] and env["LCM_API_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    (hooks,) = webhooks["spec"]["template"]["spec"]["containers"]
    timeout = float({e["name"]: e["value"] for e in hooks["env"]}["LCM_WEBHOOK_TIMEOUT_S"])
    assert webhooks["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > timeout
