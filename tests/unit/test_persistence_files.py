"""Every Redis the project ships runs with AOF fsynced every second, and the docs say so."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _conf(text: str) -> dict[str, str]:
    pairs = (ln.split(None, 1) for ln in text.splitlines() if ln.strip() and ln[0] != "#")
    return {k: v.strip() for k, v in pairs}


def test_k8s_and_docker_redis_run_with_aof():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/redis.yaml").read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    for text in (config["data"]["redis.conf"], (ROOT / "deploy/docker/redis.conf").read_text()):
        conf = _conf(text)
        assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    service = next(d for d in docs if d["kind"] == "Service")
    (fleet_config, _) = [
        d for d in yaml.safe_load_all((ROOT / "deploy/k8s/config.yaml").read_text()) if d
    ]
    assert urlsplit(fleet_config["data"]["LCM_REDIS_URL"]).hostname == service["metadata"]["name"]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]


def test_local_services_have_a_persistent_mode():
    spec = importlib.util.spec_from_file_location("svc", ROOT / "deploy/local/services.py")
    assert spec and spec.loader
    services = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(services)
    aof = services.redis_persistence_args(True)
    assert aof[aof.index("--appendonly") + 1] == "yes"
    assert aof[aof.index("--appendfsync") + 1] == "everysec"
    none = services.redis_persistence_args(False)
    assert none[none.index("--appendonly") + 1] == "no"


def test_the_docs_state_what_everysec_can_lose():
    text = (ROOT / "docs/operations.md").read_text()
    section = text.split("## Redis persistence", 1)[1].split("\n## ", 1)[0]
    assert "appendfsync everysec" in section and "last second of writes" in section
