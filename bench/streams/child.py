"""One render process of bench/streams: the worker's pipeline, pinned as the parent says.

    python -m bench.streams.child SPEC_JSON

The parent (bench/streams/run.py) sets this process's CPU affinity before it starts. It
compiles the artifact through ``worker.render.pipeline.GenaiPipeline`` (as ``lcm-worker``
serves it, with LCM_CPU_THREADS / LCM_CPU_PINNING as the spec says), renders one warm-up
image, prints ``ready``, waits for ``go`` on stdin, renders its images, prints one JSON line
(the compile time, the wall time and every image's latency) and waits for ``exit`` (the
parent reads this process's memory first). bench/streams/clone.cpp speaks the same protocol.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    from worker.render.pipeline import CompileOptions, GenaiPipeline

    t0 = time.perf_counter()
    pipe = GenaiPipeline.for_folder(
        Path(spec["model"]),
        spec["width"],
        spec["height"],
        spec["guidance_scale"],
        options=CompileOptions(
            cache_dir=spec["cache_dir"],
            cpu_threads=spec["threads"],
            cpu_pinning=spec["pinning"],
            snippets_off=spec["snippets_off"],
        ),
    )
    compile_s = time.perf_counter() - t0
    prompt, steps, scale = "a red fox in the snow", spec["steps"], spec["guidance_scale"]
    pipe.generate(prompt, 0, steps, scale)  # warm-up
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 3
    latencies = []
    t0 = time.perf_counter()
    for i in range(spec["images"]):
        start = time.perf_counter()
        pipe.generate(prompt, spec["seed_base"] + i, steps, scale)
        latencies.append(time.perf_counter() - start)
    wall_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "compile_s": compile_s,
                "wall_s": wall_s,
                "latencies_s": [latencies],
                # True also when the worker's pipeline fell back to it (SNIPPETS_FAILURE).
                "snippets_off": pipe.options.snippets_off,
            }
        ),
        flush=True,
    )
    sys.stdin.readline()  # "exit"
    return 0


if __name__ == "__main__":
    sys.exit(main())
