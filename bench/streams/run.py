"""bench/streams: images per second of one CPU socket, split into render streams several ways.

    python -m bench.streams.run --artifact DIR [--images 24] [--rounds 2] [--tag TAG]
                                [--genai-include DIR] [--configs a,b,...]

On the cores this process may use (a socket: what one lcm-fleet unit gets), each
configuration renders the same number of images (``--images``, split evenly between its
streams), all streams at once, of the artifact at its own size:

- ``1p-Nt`` (the baseline): one render process with all N cores (INFERENCE_NUM_THREADS=N,
  pinned): what lcm-fleet ran per socket before it chose from this benchmark's data;
- ``1p-Nt-nosnippets``: the baseline with SNIPPETS_MODE=DISABLE, what the worker falls back
  to when OpenVINO cannot compile the UNet for one thread per stream (worker/render/
  pipeline.py SNIPPETS_FAILURE): it separates that cost from the split's;
- ``Kp-Mt-pinned``: K processes of M = N/K threads, each pinned to M cores of its own:
  LCM_CONCURRENCY=K, LCM_CPU_THREADS=M as the worker now splits a unit's cores;
- ``Kp-Mt-shared``: the same processes, each allowed on all N cores with OpenVINO's own
  pinning (what LCM_CONCURRENCY=K LCM_CPU_THREADS=M gave before: every render process saw
  the whole unit's affinity);
- ``clone-K`` (C++, bench/streams/clone.cpp): one process, one compiled pipeline with
  NUM_STREAMS=K and N threads, K-1 ``Text2ImagePipeline::clone()`` copies, one thread per
  clone: the K streams share the compiled models' weights. genai's Python bindings (2026.4)
  have no ``clone()``, so this needs a C++ compiler and genai's headers
  (``--genai-include``: ``src/cpp/include`` of an openvino.genai checkout at the installed
  version); the C++ runs are skipped without them;
- ``cpp-1p-Nt``: the same C++ program with one pipeline and one stream: what the C++ side
  costs against Python, with the same ``--clone-config``.

The Python configurations render through the worker's own ``GenaiPipeline`` (batch 1,
``reshape``, ``CppStdGenerator(seed)``). Every configuration compiles (with a compile cache
in ``--work-dir``, as a worker does) and renders a warm-up image per stream before the clock
starts; all streams start together. Reported per
configuration and round: images/s (all images / wall time from the start to the last
image), the median and 90th percentile seconds per image, the peak RSS of its processes
summed (``VmHWM``: shared pages counted in each process) and their PSS summed (shared
pages split between them: what the machine holds), read while every process is alive
after its renders. Rounds alternate the order (forward, then reversed). Ratios are against
``1p-Nt`` of the same round, then the median over rounds. The load average and the share
of the machine's CPU other processes took during each configuration are recorded: a
shared machine inflates times; rerun when ``other_cpu_share`` is high.

Results: ``bench/results/streams-<W>x<H>-<date>[-TAG].json`` and ``.md``. No assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.pipeline import machine
from lcm_fleet.artifact.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
CLONE_SOURCE = Path(__file__).with_name("clone.cpp")


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Config:
    """One way to split the socket: ``processes`` render processes (or one C++ process of
    ``clones`` pipelines), each stream on ``cpus`` (one tuple per process)."""

    name: str
    kind: str  # "python" or "cpp"
    cpus: tuple[tuple[int, ...], ...]
    threads: int
    streams: int = 1
    clones: int = 1
    extra: tuple[str, ...] = ()
    snippets_off: bool = False

    @property
    def stream_count(self) -> int:
        return len(self.cpus) * self.clones


def plan(cores: list[int], splits: list[int], clone_config: tuple[str, ...]) -> list[Config]:
    """The baseline first, then K processes for each K in ``splits``, then the C++ runs."""
    n = len(cores)
    everything = tuple(cores)
    configs = [
        Config(f"1p-{n}t", "python", (everything,), n),
        Config(f"1p-{n}t-nosnippets", "python", (everything,), n, snippets_off=True),
    ]
    for k in splits:
        if k < 2 or n % k:
            continue
        m = n // k
        own = tuple(tuple(cores[i * m : (i + 1) * m]) for i in range(k))
        configs.append(Config(f"{k}p-{m}t-pinned", "python", own, m))
        configs.append(Config(f"{k}p-{m}t-shared", "python", (everything,) * k, m))
        configs.append(
            Config(f"clone-{k}", "cpp", (everything,), n, streams=k, clones=k, extra=clone_config)
        )
    configs.append(Config(f"cpp-1p-{n}t", "cpp", (everything,), n, extra=clone_config))
    return configs


# ---------------------------------------------------------------- the C++ program


def build_clone(work_dir: Path, include: Path) -> Path:
    """Compile bench/streams/clone.cpp against the installed genai and OpenVINO libraries."""
    import openvino
    import openvino_genai

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise BenchError("no C++ compiler (g++) for the clone runs; install one or pass --no-cpp")
    ov_dir = Path(openvino.__file__).parent
    genai_dir = Path(openvino_genai.__file__).parent
    genai_lib = next(genai_dir.glob("libopenvino_genai.so*"), None)
    ov_lib = next((ov_dir / "libs").glob("libopenvino.so.*"), None)
    if genai_lib is None or ov_lib is None:
        raise BenchError(f"libopenvino_genai / libopenvino not found under {genai_dir}, {ov_dir}")
    out = work_dir / "clone"
    # DT_RPATH (not RUNPATH) so that libopenvino's own dependencies (libtbb) resolve too.
    command = [
        compiler, "-O2", "-std=c++17", "-o", str(out), str(CLONE_SOURCE),
        f"-I{include}", f"-I{ov_dir / 'include'}", str(genai_lib), str(ov_lib),
        f"-Wl,--disable-new-dtags,-rpath,{genai_dir}:{ov_dir / 'libs'}", "-pthread",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"compiling {CLONE_SOURCE} failed:\n{done.stderr[-3000:]}")
    return out


def tokenizers_library() -> str:
    """genai's C++ side looks for the tokenizers extension beside itself unless told."""
    import openvino_tokenizers

    lib = next(Path(openvino_tokenizers.__file__).parent.glob("lib/libopenvino_tokenizers.so"))
    return str(lib)


# ---------------------------------------------------------------- one configuration


def proc_memory(pid: int) -> dict[str, float]:
    """VmHWM, VmRSS (status) and Pss (smaps_rollup) of ``pid``, in GiB."""
    figures: dict[str, float] = {}
    for name, keys in (("status", ("VmHWM", "VmRSS")), ("smaps_rollup", ("Pss",))):
        with open(f"/proc/{pid}/{name}", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    figures[key] = int(value.split()[0]) / 1024**2
    return figures


def cpu_times(pids: list[int]) -> tuple[float, float, float]:
    """(machine busy s, machine total s, these processes' CPU s), cumulative."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total, idle = sum(fields[:8]), fields[3] + fields[4]
    own = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        own += int(parts[11]) + int(parts[12])  # utime, stime (with all threads)
    return (total - idle) / tick, total / tick, own / tick


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Shape:
    model: Path
    width: int
    height: int
    steps: int
    guidance_scale: float


@dataclass
class Launcher:
    shape: Shape
    clone_binary: Path | None
    timeout_s: float
    cache_dir: str
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, config: Config, images: int, seed_base: int) -> list[str]:
        s = self.shape
        if config.kind == "python":
            spec = {
                "model": str(s.model),
                "width": s.width,
                "height": s.height,
                "steps": s.steps,
                "guidance_scale": s.guidance_scale,
                "threads": config.threads,
                "pinning": True,
                "snippets_off": config.snippets_off,
                "cache_dir": self.cache_dir,
                "images": images,
                "seed_base": seed_base,
            }
            return [sys.executable, "-m", "bench.streams.child", json.dumps(spec)]
        if self.clone_binary is None:
            raise BenchError("no C++ program for the clone runs")
        return [
            str(self.clone_binary), str(s.model), str(s.width), str(s.height), str(s.steps),
            str(s.guidance_scale), str(config.clones), str(images), str(config.threads),
            str(config.streams), "1", *config.extra,
            *([f"CACHE_DIR={self.cache_dir}"] if self.cache_dir else []),
        ]  # fmt: skip

    def run(self, config: Config, total_images: int) -> dict[str, Any]:
        per_stream = max(1, total_images // config.stream_count)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        if config.kind == "cpp":
            env["OPENVINO_TOKENIZERS_PATH_GENAI"] = tokenizers_library()
        self.children = []
        try:
            for i, cpus in enumerate(config.cpus):

                def pin(cpus: tuple[int, ...] = cpus) -> None:  # in the child, before exec
                    os.sched_setaffinity(0, cpus)

                self.children.append(
                    subprocess.Popen(
                        self.command(config, per_stream, 1 + 1000 * i),
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        preexec_fn=pin,
                    )
                )
            for child in self.children:
                self._expect(child, "ready")
            pids = [c.pid for c in self.children]
            load_before = load_average()
            before = cpu_times(pids)
            t0 = time.perf_counter()
            for child in self.children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            replies = [json.loads(self._expect(child, "{")) for child in self.children]
            wall_s = time.perf_counter() - t0
            after = cpu_times(pids)
            memory = [proc_memory(pid) for pid in pids]
            for child in self.children:
                assert child.stdin is not None
                child.stdin.write("exit\n")
                child.stdin.flush()
            for child in self.children:
                child.wait(timeout=60)
        finally:
            for child in self.children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        latencies = sorted(x for r in replies for stream in r["latencies_s"] for x in stream)
        images = len(latencies)
        busy, total, own = (a - b for a, b in zip(after, before, strict=True))
        return {
            "config": config.name,
            "images": images,
            "streams": config.stream_count,
            "wall_s": round(wall_s, 3),
            "images_per_s": round(images / wall_s, 4),
            "latency_median_s": round(statistics.median(latencies), 4),
            "latency_p90_s": round(latencies[min(images - 1, int(0.9 * images))], 4),
            "compile_s": [round(r["compile_s"], 2) for r in replies],
            "snippets_off": [
                r.get("snippets_off", "SNIPPETS_MODE=DISABLE" in config.extra) for r in replies
            ],
            "peak_rss_gib_sum": round(sum(m["VmHWM"] for m in memory), 3),
            "pss_gib_sum": round(sum(m["Pss"] for m in memory), 3),
            "rss_gib_each": [round(m["VmRSS"], 3) for m in memory],
            "cpu_s": round(own, 2),
            "other_cpu_share": round(max(busy - own, 0.0) / total, 3) if total else None,
            "load_before": load_before,
            "load_after": load_average(),
        }

    def _expect(self, child: subprocess.Popen[str], start: str) -> str:
        assert child.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                raise BenchError(f"{child.args[0]} exited with {child.wait()} before {start!r}")
            if line.startswith(start):
                return line
        raise BenchError(f"no {start!r} from pid {child.pid} within {self.timeout_s:.0f}s")


# ---------------------------------------------------------------- the report


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(rounds: list[list[dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    names = [r["config"] for r in rounds[0]]
    rows = []
    for name in names:
        runs = [r for rnd in rounds for r in rnd if r["config"] == name]
        ratios = []
        for rnd in rounds:
            base = next(r for r in rnd if r["config"] == baseline)
            mine = next(r for r in rnd if r["config"] == name)
            ratios.append(mine["images_per_s"] / base["images_per_s"])
        rows.append(
            {
                "config": name,
                "streams": runs[0]["streams"],
                "images_per_s": round(statistics.median(r["images_per_s"] for r in runs), 4),
                "vs_baseline": round(statistics.median(ratios), 3),
                "vs_baseline_each_round": [round(x, 3) for x in ratios],
                "latency_median_s": round(median_of(runs, "latency_median_s"), 4),
                "latency_p90_s": round(median_of(runs, "latency_p90_s"), 4),
                "peak_rss_gib_sum": max(r["peak_rss_gib_sum"] for r in runs),
                "pss_gib_sum": max(r["pss_gib_sum"] for r in runs),
                "other_cpu_share_max": max(r["other_cpu_share"] or 0.0 for r in runs),
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m, shape = report["machine"], report["shape"]
    lines = [
        f"# Streams per socket, {shape['width']}x{shape['height']}, {shape['steps']} steps "
        f"({m['cpu_model']}, ISA {report['isa']}, {report['cores']} cores, {report['started']})",
        "",
        f"Artifact: `{report['artifact']}`. {report['images']} images per configuration and "
        f"round, {report['rounds']} rounds (order alternated); ratios against "
        f"`{report['baseline']}` of the same round, median over rounds.",
        "",
        "| config | streams | images/s | vs baseline | per round | s per image (median) | "
        "p90 | peak RSS GiB (sum) | PSS GiB (sum) | other CPU share (max) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["summary"]:
        each = ", ".join(f"{x:.2f}" for x in r["vs_baseline_each_round"])
        lines.append(
            f"| {r['config']} | {r['streams']} | {r['images_per_s']:.3f} | "
            f"{r['vs_baseline']:.2f}x | {each} | {r['latency_median_s']:.3f} | "
            f"{r['latency_p90_s']:.3f} | {r['peak_rss_gib_sum']:.2f} | {r['pss_gib_sum']:.2f} | "
            f"{r['other_cpu_share_max']:.2f} |"
        )
    lines += ["", f"Load average (1, 5, 15 min) before: {report['load_before']}, after: "
              f"{report['load_after']}."]  # fmt: skip
    for note in report["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def isa_of(flags: list[str]) -> str:
    if "amx_tile" in flags:
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    return "AVX2" if "avx2" in flags else "other"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streams.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, required=True, help="an INT8 artifact folder")
    parser.add_argument("--images", type=int, default=24, help="images per configuration")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="LCM steps per image")
    parser.add_argument("--splits", default="2", help="process counts K to try, e.g. 2,4")
    parser.add_argument("--configs", help="comma list of configuration names (default: all)")
    parser.add_argument("--genai-include", type=Path, help="openvino.genai src/cpp/include")
    parser.add_argument(
        "--clone-config",
        default="SNIPPETS_MODE=DISABLE",
        help="extra OpenVINO properties KEY=VALUE,... of the C++ runs (default "
        "SNIPPETS_MODE=DISABLE: genai 2026.4.1's CPU plugin cannot compile the static UNet "
        "with NUM_STREAMS=2 otherwise)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("var/bench-streams"), help="C++ program, cache"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="no OpenVINO compile cache (WORK_DIR/cache)"
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 2 or args.rounds < 1:
        raise SystemExit("--images must be at least 2 and --rounds at least 1")
    manifest = read_manifest(args.artifact)
    if manifest.shape is None or manifest.shape.width is None or manifest.shape.height is None:
        raise SystemExit(f"{args.artifact}: its manifest records no shape")
    shape = Shape(
        args.artifact.resolve(),
        manifest.shape.width,
        manifest.shape.height,
        args.steps,
        float(manifest.shape.guidance_scale or 8.0),
    )
    cores = sorted(os.sched_getaffinity(0))
    extra = tuple(x for x in args.clone_config.split(",") if x.strip())
    configs = plan(cores, [int(k) for k in args.splits.split(",")], extra)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    clone_binary = None
    notes = []
    if args.genai_include is not None:
        clone_binary = build_clone(args.work_dir, args.genai_include)
    else:
        configs = [c for c in configs if c.kind != "cpp"]
        notes.append("No --genai-include: the C++ clone runs were skipped.")
    if args.configs:
        wanted = set(args.configs.split(","))
        configs = [c for c in configs if c.name in wanted or c.name == configs[0].name]
    cache_dir = "" if args.no_cache else str((args.work_dir / "cache").resolve())
    launcher = Launcher(shape, clone_binary, args.timeout_s, cache_dir)
    started = datetime.now(timezone.utc)
    load_before = load_average()
    rounds = []
    for i in range(args.rounds):
        order = configs if i % 2 == 0 else configs[::-1]
        results = []
        for config in order:
            print(f"round {i + 1}: {config.name} ...", flush=True)
            result = launcher.run(config, args.images)
            print(
                f"  {result['images_per_s']:.3f} images/s, median {result['latency_median_s']:.3f}"
                f" s/image, PSS {result['pss_gib_sum']:.2f} GiB, other CPU "
                f"{result['other_cpu_share']:.2f}, load {result['load_before']}",
                flush=True,
            )
            results.append(result)
        rounds.append(results)
    m = machine.describe()
    report = {
        "benchmark": "streams",
        "started": started.isoformat(timespec="seconds"),
        "artifact": str(args.artifact),
        "artifact_manifest_sha256": manifest.sha256,
        "shape": asdict(shape) | {"model": str(shape.model)},
        "cores": len(cores),
        "isa": isa_of(m["flags"]),
        "machine": m,
        "images": args.images,
        "rounds": args.rounds,
        "baseline": configs[0].name,
        "configs": [asdict(c) for c in configs],
        "summary": summarise(rounds, configs[0].name),
        "runs": rounds,
        "load_before": load_before,
        "load_after": load_average(),
        "notes": notes,
        "command": " ".join(sys.argv),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"streams-{shape.width}x{shape.height}-{started:%Y%m%d-%H%M}"
    if args.tag:
        stem += f"-{args.tag}"
    (args.results_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
