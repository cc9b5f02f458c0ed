"""lcm_images_per_core_hour (worker/metrics.py): images stored per core-hour over a window."""

from __future__ import annotations

import pytest

from worker.metrics import CoreHourRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_counts_idle_time_and_forgets_images_older_than_the_window() -> None:
    clock = Clock()
    rate = CoreHourRate(cores=2, window_s=600, clock=clock)
    assert rate.value() == 0.0  # no time has passed, no images
    clock.now += 60
    rate.add(4)  # 4 images in the first minute on 2 cores: 4 / (2 * 1/60 h) = 120
    assert rate.value() == pytest.approx(120.0)
    clock.now += 60  # a minute idle halves it
    assert rate.value() == pytest.approx(60.0)
    clock.now += 600  # the images left the window
    assert rate.value() == 0.0
    rate.add(10)
    assert rate.value() == pytest.approx(3600 * 10 / (2 * 600))
