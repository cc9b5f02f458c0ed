import random

import pytest

from lcm_fleet.backoff import Backoff, call_with_backoff


def test_delay_is_capped_exponential_with_jitter():
    b = Backoff(base_s=0.5, cap_s=4.0, attempts=10)
    assert [b.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    rng = random.Random(1)
    delays = [b.delay(3, rng) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # jittered, not a fixed value
    assert b.ceiling(10_000) == 4.0


def test_retries_transient_then_succeeds():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    out = call_with_backoff(
        flaky,
        transient=(ConnectionError,),
        backoff=Backoff(0.1, 1.0, 5),
        what="t",
        sleep=sleeps.append,
    )
    assert out == "ok" and len(calls) == 3 and len(sleeps) == 2


def test_gives_up_after_attempts():
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call_with_backoff(
            down,
            transient=(ConnectionError,),
            backoff=Backoff(0.1, 1.0, 4),
            what="t",
            sleep=lambda s: None,
        )
    assert len(calls) == 4


def test_permanent_error_is_not_retried():
    calls = []

    def bad():
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        call_with_backoff(
            bad, transient=(ConnectionError,), backoff=Backoff(), what="t", sleep=lambda s: None
        )
    assert len(calls) == 1


@pytest.mark.parametrize(("base", "cap", "attempts"), [(0, 1, 1), (2, 1, 1), (1, 2, 0)])
def test_invalid_backoff(base, cap, attempts):
    with pytest.raises(ValueError):
        Backoff(base, cap, attempts)
