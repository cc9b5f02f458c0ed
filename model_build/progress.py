"""Progress for long stages that report none of their own, and the process's peak memory."""

from __future__ import annotations

import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def elapsed_bar(desc: str, enabled: bool = True) -> Iterator[None]:
    """A bar that ticks every second while a call without progress callbacks runs."""
    from tqdm import tqdm

    if not enabled:
        yield
        return
    done = threading.Event()
    bar = tqdm(desc=desc, unit="s", bar_format="{desc}: {elapsed} elapsed")

    def tick() -> None:
        while not done.wait(1.0):
            bar.update(1)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
