"""Model names, references and S3 keys of the registry; the worker's choice of model source."""

import pytest
from pydantic import ValidationError

from lcm_fleet.artifact.registry import (
    ModelRef,
    RegistryInputError,
    looks_like_ref,
    parse_ref,
    validate_alias,
    validate_name,
    version_of,
)
from lcm_fleet.keys import alias_key, object_key, version_prefix
from model_build.cli import exit_code
from worker.cli import settings_error
from worker.settings import WorkerSettings

VERSION = "0123456789abcdef"


@pytest.mark.parametrize("name", ["tiny", "dreamshaper-int8", "a", "0.1_b-c", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Tiny", "-tiny", ".tiny", "_x", "a/b", "a b", "a@b", "x" * 65, "ü", None]
)
def test_invalid_names_say_what_and_how(name):
    with pytest.raises(RegistryInputError) as info:
        validate_name(name)
    message = str(info.value)
    assert f"name={name!r}" in message and "a-z, 0-9" in message and "e.g." in message
    assert exit_code(info.value) == 2  # lcm-build exits 2


def test_refs():
    assert parse_ref("tiny@latest") == ModelRef("tiny", "latest")
    assert parse_ref("tiny@latest").version is None
    ref = parse_ref(f"tiny@{VERSION}")
    assert ref.version == VERSION and str(ref) == f"tiny@{VERSION}"
    assert parse_ref("tiny@stable").tag == "stable"
    assert parse_ref(ref) is ref


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("tiny", "is not NAME@TAG"),
        ("a@b@c", "is not NAME@TAG"),
        ("tiny@", "no tag after '@'"),
        ("@latest", "name=''"),
        ("Tiny@latest", "name='Tiny'"),
        ("tiny@Latest", "neither a version"),
        ("tiny@0123456789ABCDEF", "neither a version"),
        ("tiny@../x", "neither a version"),
    ],
)
def test_bad_refs(ref, needle):
    with pytest.raises(RegistryInputError) as info:
        parse_ref(ref)
    assert needle in str(info.value) and f"model reference {ref!r}" in str(info.value)
    assert not looks_like_ref(ref)


def test_aliases_cannot_look_like_versions():
    assert validate_alias("latest") == "latest"
    with pytest.raises(RegistryInputError, match="looks like a version"):
        validate_alias(VERSION)
    with pytest.raises(RegistryInputError, match="alias='Latest'"):
        validate_alias("Latest")


def test_keys_under_prefix():
    assert version_of("ab" * 32) == "ab" * 8
    assert object_key("", "tiny", VERSION, "unet/x.bin") == f"models/tiny/{VERSION}/unet/x.bin"
    assert version_prefix("renders/", "tiny", VERSION) == f"renders/models/tiny/{VERSION}/"
    assert alias_key("a/b", "tiny") == "a/b/models/tiny/latest.json"
    assert alias_key("", "tiny", "stable") == "models/tiny/stable.json"


@pytest.fixture
def env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LCM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LCM_S3_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("LCM_S3_SECRET_ACCESS_KEY", "secret")
    return monkeypatch


def test_worker_takes_a_ref_or_a_folder(env, tmp_path):
    env.setenv("LCM_MODEL", "tiny@latest")
    env.setenv("LCM_MODEL_CACHE_DIR", str(tmp_path))
    s = WorkerSettings()
    assert s.model == "tiny@latest" and s.model_dir is None and s.model_cache_dir == tmp_path
    env.setenv("LCM_MODEL", str(tmp_path))
    assert WorkerSettings().model == str(tmp_path)
    env.delenv("LCM_MODEL")
    env.setenv("LCM_MODEL_DIR", str(tmp_path))
    assert WorkerSettings().model_dir == tmp_path


def test_worker_needs_exactly_one_model_source(env, tmp_path):
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    assert "set exactly one of LCM_MODEL" in settings_error(info.value)
    assert "neither is set" in settings_error(info.value)
    env.setenv("LCM_MODEL", "tiny@latest")
    env.setenv("LCM_MODEL_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match="both are set"):
        WorkerSettings()


def test_worker_refuses_a_malformed_ref_at_settings(env):
    env.setenv("LCM_MODEL", "Tiny@latest")
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    message = settings_error(info.value)
    assert "LCM_MODEL='Tiny@latest' is neither an artifact folder nor a published model" in message
    assert "a-z, 0-9" in message


def test_the_worker_pulls_through_the_kernel_registry_alone():
    """The worker image has no model_build (deploy/docker/Dockerfile): nothing may load it."""
    import subprocess
    import sys

    code = (
        "import sys, lcm_fleet.artifact.registry, worker.model.source, worker.settings; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert "model_build" not in loaded
    assert not loaded & {"boto3", "botocore", "openvino", "torch"}  # a client is made on pull
