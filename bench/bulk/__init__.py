"""bench/bulk: bulk files at scale (bench/bulk/run.py)."""
