import pytest
from pydantic import ValidationError

from producer.settings import ProducerSettings
from worker.cli import settings_error
from worker.settings import WorkerSettings

REQUIRED = {
    "LCM_MODEL_DIR": "/models/a",
    "LCM_S3_ACCESS_KEY_ID": "key",
    "LCM_S3_SECRET_ACCESS_KEY": "hunter2-value",
}


@pytest.fixture
def env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LCM_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_worker_reads_prefixed_env(env):
    for k, v in REQUIRED.items():
        env.setenv(k, v)
    env.setenv("LCM_DEVICE", "GPU.1")
    env.setenv("LCM_TASK_TIME_LIMIT_S", "120")
    env.setenv("LCM_TASK_SOFT_TIME_LIMIT_S", "100")
    env.setenv("LCM_S3_PREFIX", "/renders/")
    s = WorkerSettings()
    assert s.device == "GPU.1" and s.task_time_limit_s == 120
    assert s.s3_prefix == "renders/"
    assert s.s3_secret_access_key.get_secret_value() == "hunter2-value"
    assert "hunter2-value" not in repr(s)


def test_secrets_have_no_defaults(env):
    env.setenv("LCM_MODEL_DIR", "/m")
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    message = settings_error(info.value)
    assert "LCM_S3_ACCESS_KEY_ID: Field required" in message
    assert "LCM_S3_SECRET_ACCESS_KEY: Field required" in message


def test_visibility_timeout_must_exceed_hard_limit(env):
    for k, v in REQUIRED.items():
        env.setenv(k, v)
    env.setenv("LCM_TASK_TIME_LIMIT_S", "4000")
    env.setenv("LCM_TASK_SOFT_TIME_LIMIT_S", "3900")
    with pytest.raises(ValidationError, match="visibility_timeout_s=3600 must exceed"):
        WorkerSettings()


def test_soft_limit_below_hard(env):
    for k, v in REQUIRED.items():
        env.setenv(k, v)
    env.setenv("LCM_TASK_SOFT_TIME_LIMIT_S", "700")
    with pytest.raises(ValidationError, match="must be below"):
        WorkerSettings()


def test_size_must_be_multiple_of_8_and_paired(env):
    for k, v in REQUIRED.items():
        env.setenv(k, v)
    env.setenv("LCM_WIDTH", "500")
    env.setenv("LCM_HEIGHT", "512")
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    assert "LCM_WIDTH" in settings_error(info.value) and "500" in settings_error(info.value)
    env.setenv("LCM_WIDTH", "512")
    env.delenv("LCM_HEIGHT")
    with pytest.raises(ValidationError, match="set both LCM_WIDTH and LCM_HEIGHT"):
        WorkerSettings()


def test_producer_needs_no_secrets(env):
    s = ProducerSettings()
    assert s.redis_url.startswith("redis://") and s.s3_access_key_id is None


@pytest.mark.parametrize(
    ("warmup", "budget", "expected"),
    [(None, None, False), (None, "6", True), ("false", "6", False), ("true", None, True)],
)
def test_warm_up_by_default_only_to_measure_for_a_memory_budget(env, warmup, budget, expected):
    for k, v in REQUIRED.items():
        env.setenv(k, v)
    if warmup is not None:
        env.setenv("LCM_WARMUP", warmup)
    if budget is not None:
        env.setenv("LCM_MEMORY_BUDGET_GIB", budget)
    assert WorkerSettings().warms_up() is expected
