"""Variants of lcm-api under the same bench, interleaved round by round, into one folder.

On a machine shared with other work absolute figures drift with the load; running a baseline
and the candidates in turn, several rounds, lets them be compared at the same load. Each run
is ``bench.api.run`` (its own services, API, key and lost-job check); the folder gets every
run's JSON and report and a README with the table, the load before each run and the ISA.

    python -m bench.api.compare --baseline /work/main --site /tmp/extra --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.api import run as api_run
from bench.services import ROOT

ISA = ("avx2", "avx512_vnni", "amx_tile")


def variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    if args.baseline:
        out.append(("baseline-1proc", ["--api-root", str(args.baseline)]))
    out.append(("this-1proc-asyncio-h11", []))
    if args.site:
        site = ["--api-site", str(args.site)]
        out.append(("this-1proc-uvloop-httptools", site))
        out.append(("this-2proc-uvloop-httptools", [*site, "--api-workers", "2"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.api.compare", description=__doc__)
    parser.add_argument("--baseline", type=Path, default=None, help="code tree of the baseline")
    parser.add_argument("--site", type=Path, default=None, help="dir with uvloop and httptools")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--poll-levels", default="64")
    parser.add_argument("--duration-s", type=int, default=15)
    parser.add_argument(
        "--paced-rate", type=float, default=500.0, help="offered submits/s of the paced runs"
    )
    parser.add_argument("--paced-users", default="64")
    parser.add_argument("--redis-url", default=os.environ.get("LCM_BENCH_REDIS_URL"))
    parser.add_argument("--s3-port", type=int, default=18633)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M")
    out = args.out or ROOT / "bench" / "results" / f"api-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    common = ["--s3-port", str(args.s3_port), "--results-dir", str(out)]
    common += ["--work-dir", str(ROOT / "var" / "bench" / "api-compare")]
    if args.redis_url:
        common += ["--redis-url", args.redis_url]
    runs: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        for name, extra in variants(args):
            for paced in (False, True):
                tag = f"r{round_}-{name}" + ("-paced" if paced else "")
                level = ["--levels", args.paced_users if paced else args.levels]
                level += ["--poll-levels", "" if paced else args.poll_levels]
                level += ["--rate", str(args.paced_rate)] if paced else []
                before = os.getloadavg()
                api_run.main(
                    [*common, *extra, *level, "--duration-s", str(args.duration_s), "--tag", tag]
                )
                (result,) = sorted(out.glob(f"api-*-{tag}.json"))
                runs.append(
                    {
                        "tag": tag,
                        "variant": name,
                        "round": round_,
                        "paced": paced,
                        "load_before": before,
                        "result": json.loads(result.read_text()),
                    }
                )
    (out / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    (out / "README.md").write_text(readme(runs, args))
    print(f"wrote {out}")
    return 0


def _isa() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return ", ".join(flag for flag in ISA if flag in text.split()) or "none of " + ", ".join(ISA)


def _cpu(stats: dict[str, Any]) -> str:
    """API / Redis / locust CPU seconds of a level ("-" for runs without them)."""
    cpu = stats.get("cpu")
    if not cpu:
        return str(stats.get("locust_cpu_s", "-"))
    return f"{cpu['api_s']} / {cpu['redis_s']} / {cpu['locust_s']}"


def readme(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    when = datetime.now(timezone.utc).isoformat(timespec="minutes")
    first = runs[0]["result"]["machine"] if runs else {}
    lines = [
        f"# bench/api compared, {when}",
        "",
        f"Machine: {first.get('cpu_model')}, {first.get('usable_cores')} usable cores, ISA "
        f"{_isa()}; shared with other sessions' work (the load average before each run is "
        "listed). Locust runs on the same 2 cores. Each run: `python -m bench.api.run` with its "
        f"own API process(es), {args.duration_s} s per level; variants interleaved, "
        f"{args.rounds} round(s). Paced runs: {args.paced_users} clients offering "
        f"{args.paced_rate:g} submits/s together (locust constant_throughput); the others "
        "closed loop (each client sends its next request when the last is answered, so at 64 "
        "clients the latency is 64 / throughput by Little's law).",
        "",
        "| run | load 1/5 min before | clients | accepted/s | p50 | p90 | p99 ms | accepted | "
        "lost | CPU s: API / Redis / locust |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        load = f"{r['load_before'][0]:.1f} / {r['load_before'][1]:.1f}"
        for s in r["result"]["submit"]:
            lines.append(
                f"| {r['tag']} | {load} | {s['users']} | {s['ok_per_s']} | {s['p50_ms']:.0f} | "
                f"{s['p90_ms']:.0f} | {s['p99_ms']:.0f} | {s['jobs']['accepted']} | "
                f"{s['jobs']['lost']} | {_cpu(s)} |"
            )
        for s in r["result"]["poll"]:
            lines.append(
                f"| {r['tag']} polls | {load} | {s['users']} | {s['ok_per_s']} | "
                f"{s['p50_ms']:.0f} | {s['p90_ms']:.0f} | {s['p99_ms']:.0f} | | | "
                f"{_cpu(s)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
