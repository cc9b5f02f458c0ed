"""Load on the live lcm-api: accepted submits/s and latency at 1, 16 and 64 clients, polls/s.

Starts the local Redis and S3 (deploy/local/services.py), ``lcm-api serve`` on loopback (or
uvicorn with ``--api-workers`` processes) on a queue of its own, a key without limits, then
locust headless (bench/api/locustfile.py) for ``--duration-s`` per level. After each submit
level it checks that no job was lost: every accepted id has a record, and every queued one
is on the queue (no worker drains it), then deletes them. With ``--profile`` py-spy samples
the API during the largest level and the report lists where its time went.
Results: bench/results/api-<date>.json and .md. Never a timed assertion.

    python -m bench.api.run                      # 1, 16, 64 clients, 20 s each
    python -m bench.api.run --levels 1,4 --duration-s 5     # smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.pipeline.machine import describe
from bench.services import ROOT, local_services
from lcm_fleet.keys import in_flight_key, job_key

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(
    env: dict[str, str],
    port: int,
    workers: int,
    log: Path,
    root: Path = ROOT,
    server: str = "lcm-api",
    site: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``lcm-api serve`` of the code tree ``root`` (another checkout: a baseline), or with
    ``server="uvicorn"`` uvicorn's own CLI (without lcm-api's TCP_NODELAY protocol)."""
    if server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "producer.http.app:create_app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    else:
        cmd = [sys.executable, "-m", "producer.http.cli", "serve", "--port", str(port)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
    cmd += ["--no-access-log", "--log-level", "warning"]
    env = {**env, "PYTHONPATH": str(root) + (f"{os.pathsep}{site}" if site else "")}
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lcm-api exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"lcm-api did not answer in 60 s:\n{log.read_text()[-2000:]}")


def run_locust(
    url: str, users: int, duration_s: int, env: dict[str, str], prefix: Path
) -> dict[str, Any]:
    """One level; returns locust's figures and the CPU seconds locust itself used."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    cmd += ["-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--host", url]
    cmd += ["--csv", str(prefix), "--only-summary"]
    cmd += ["--loglevel", "WARNING"]
    before = os.times()
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=duration_s + 120)
    after = os.times()
    locust_cpu_s = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
    (row,) = rows
    count, failures = int(row["Request Count"]), int(row["Failure Count"])
    rps = float(row["Requests/s"])
    return {
        "users": users,
        "requests": count,
        "failures": failures,
        "requests_per_s": round(rps, 1),
        "ok_per_s": round(rps * (count - failures) / count, 1) if count else 0.0,
        "p50_ms": float(row["50%"]),
        "p90_ms": float(row["90%"]),
        "p99_ms": float(row["99%"]),
        "max_ms": float(row["Max Response Time"]),
        "mean_ms": round(float(row["Average Response Time"]), 2),
        "locust_cpu_s": round(locust_cpu_s, 1),
    }


def api_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the API process and its children (uvicorn workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def redis_cpu_s(redis_url: str) -> float:
    """CPU seconds of the Redis server so far (INFO cpu; a shared server counts all users)."""
    import redis

    info: Any = redis.Redis.from_url(redis_url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measured(api_pid: int, redis_url: str, *locust_args: Any) -> dict[str, Any]:
    """:func:`run_locust`'s stats with the CPU seconds the API, Redis and locust used."""
    api0, redis0, wall0 = api_cpu_s(api_pid), redis_cpu_s(redis_url), time.monotonic()
    stats: dict[str, Any] = run_locust(*locust_args)
    wall = time.monotonic() - wall0
    stats["cpu"] = {
        "wall_s": round(wall, 1),
        "api_s": round(api_cpu_s(api_pid) - api0, 1),
        "redis_s": round(redis_cpu_s(redis_url) - redis0, 1),
        "locust_s": stats.pop("locust_cpu_s"),
    }
    if stats["requests"]:
        stats["cpu"]["api_ms_per_request"] = round(
            1000 * stats["cpu"]["api_s"] / stats["requests"], 2
        )
    return stats


def check_and_clear(redis_url: str, queue: str, ids: list[str], owner: str) -> dict[str, Any]:
    """No job lost: each accepted id has a record, each queued one a message on the queue.
    Then the messages, records and the key's in-flight count are deleted for the next level."""
    import redis

    r = redis.Redis.from_url(redis_url)
    on_queue = {json.loads(raw)["headers"]["id"] for raw in r.lrange(queue, 0, -1)}
    pipe = r.pipeline()
    for job_id in ids:
        pipe.hget(job_key(job_id), "state")
    states = [s.decode() if s else None for s in pipe.execute()]
    no_record = [i for i, s in zip(ids, states, strict=True) if s is None]
    not_queued = [
        i for i, s in zip(ids, states, strict=True) if s == "queued" and i not in on_queue
    ]
    out = {
        "accepted": len(ids),
        "distinct": len(set(ids)),
        "states": dict(Counter(s or "missing" for s in states)),
        "on_queue": len(on_queue),
        "without_record": len(no_record),
        "queued_not_on_queue": len(not_queued),
        "lost": len(no_record) + len(not_queued),
    }
    for start in range(0, len(ids), 5000):
        r.delete(*[job_key(i) for i in ids[start : start + 5000]])
    r.delete(queue, in_flight_key(owner))
    return out


def profile_summary(raw: Path, top: int = 20) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> the functions with the most own and total time."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";") if f]
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / samples, 1)] for name, n in counter.most_common(top)]

    return {"samples": samples, "own_pct": share(own), "total_pct": share(total)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.api.run", description=__doc__)
    parser.add_argument("--levels", default="1,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--poll-levels", default="16,64", help="clients of the status polls")
    parser.add_argument("--duration-s", type=int, default=20, help="seconds per level")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn processes")
    parser.add_argument(
        "--api-root",
        type=Path,
        default=ROOT,
        help="code tree the API runs from (e.g. a checkout of main, for a baseline)",
    )
    parser.add_argument(
        "--api-site",
        type=Path,
        default=None,
        help="more packages for the API only (e.g. `pip install --target DIR uvloop httptools`)",
    )
    parser.add_argument(
        "--server",
        choices=("lcm-api", "uvicorn"),
        default="lcm-api",
        help="lcm-api serve, or uvicorn's own CLI (no TCP_NODELAY on its connections)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="paced: submits/s offered by all clients together (locust constant_throughput); "
        "0: closed loop, each client sends its next request when the last one is answered",
    )
    parser.add_argument("--redis-url", default=os.environ.get("LCM_BENCH_REDIS_URL"))
    parser.add_argument("--s3-port", type=int, default=18633)
    parser.add_argument("--profile", action="store_true", help="py-spy on the largest level")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench" / "api")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]
    poll_levels = [int(x) for x in args.poll_levels.split(",") if x]
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)

    # 1. Services: Redis (the running one, or started) and S3 (for /readyz; submits need none).
    services = local_services()
    env_s = services.start(work / "services", s3_port=args.s3_port, redis_url=args.redis_url)
    queue = f"lcm.bench.api.{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(env_s)
    env.update(
        LCM_QUEUE=queue,
        LCM_API_KEY_PEPPER=secrets.token_hex(32),
        LCM_API_HOST="127.0.0.1",
        PYTHONPATH=str(ROOT),
    )
    redis_url = env["LCM_REDIS_URL"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    # 2. The API and a key without limits.
    api = start_api(
        env, port, args.api_workers, work / "api.log", args.api_root, args.server, args.api_site
    )
    unlimited = ["--rate-per-minute", "1000000000", "--max-in-flight", "1000000000"]
    create = [sys.executable, "-m", "producer.http.cli", "keys", "create", "bench", "--quiet"]
    key = subprocess.run(
        [*create, *unlimited], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    owner = key.split("_")[1]
    results: dict[str, Any] = {
        "bench": "api",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "setup": {
            "api_workers": args.api_workers,
            "api_root": str(args.api_root),
            "server": args.server,
            "api_site": str(args.api_site) if args.api_site else None,
            "api_commit": subprocess.run(
                ["git", "-C", str(args.api_root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            "offered_per_s": args.rate or None,
            "duration_s": args.duration_s,
            "client": "locust FastHttpUser, closed loop (no wait), on the same machine",
            "redis": redis_url,
            "worker": "none: jobs stay queued (the check reads them on the queue)",
        },
        "submit": [],
        "poll": [],
    }
    try:
        # 3. Submits at each level, each checked for lost jobs.
        for users in levels:
            ids_file = work / f"ids-{users}.txt"
            lenv = {**env, "LCM_BENCH_KEY": key, "LCM_BENCH_MODE": "submit"}
            lenv["LCM_BENCH_IDS_OUT"] = str(ids_file)
            if args.rate:
                lenv["LCM_BENCH_USER_RATE"] = str(args.rate / users)
            load_before = os.getloadavg()
            spy = None
            if args.profile and users == max(levels):
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(api.pid), "--rate", "100"]
                    + ["--duration", str(max(1, args.duration_s - 4)), "--format", "raw"]
                    + ["--output", str(work / "profile.txt"), "--nonblocking"]
                    + (["--subprocesses"] if args.api_workers > 1 else []),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            stats = measured(
                api.pid, redis_url, url, users, args.duration_s, lenv, work / f"submit-{users}"
            )
            if spy is not None:
                spy.wait(timeout=60)
            ids = ids_file.read_text().split() if ids_file.exists() else []
            stats["load_before"] = [round(x, 2) for x in load_before]
            stats["load_after"] = [round(x, 2) for x in os.getloadavg()]
            stats["jobs"] = check_and_clear(redis_url, queue, ids, owner)
            results["submit"].append(stats)
            print(json.dumps(stats), flush=True)
        # 4. Status polls of jobs that exist (submitted again, since the check cleared them).
        poll_ids = work / "poll-ids.txt"
        lenv = {**env, "LCM_BENCH_KEY": key, "LCM_BENCH_MODE": "submit"}
        lenv["LCM_BENCH_IDS_OUT"] = str(poll_ids)
        run_locust(url, 8, 3, lenv, work / "poll-seed")
        for users in poll_levels:
            lenv = {**env, "LCM_BENCH_KEY": key, "LCM_BENCH_MODE": "poll"}
            lenv["LCM_BENCH_IDS_IN"] = str(poll_ids)
            load_before = os.getloadavg()
            stats = measured(
                api.pid, redis_url, url, users, args.duration_s, lenv, work / f"poll-{users}"
            )
            stats["load_before"] = [round(x, 2) for x in load_before]
            results["poll"].append(stats)
            print(json.dumps(stats), flush=True)
        check_and_clear(redis_url, queue, poll_ids.read_text().split(), owner)
        if args.profile and (work / "profile.txt").exists():
            results["profile"] = profile_summary(work / "profile.txt")
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
        services.stop_s3(work / "services")

    # 5. Results.
    stamp = datetime.now().strftime("%Y%m%d-%H%M")
    name = f"api-{stamp}{('-' + args.tag) if args.tag else ''}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(report(results))
    print(f"wrote {args.results_dir / name}.json and .md")
    return 0


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# bench/api, {r['when']}",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('usable_cores')} usable cores, "
        f"ISA flags {', '.join(m.get('flags') or []) or 'none of interest'}, "
        f"{m.get('ram_gib')} GiB. API: {r['setup']['api_workers']} uvicorn process(es); "
        f"client: {r['setup']['client']}; {r['setup']['duration_s']} s per level; "
        f"worker: {r['setup']['worker']}.",
        "",
        "## Submits (POST /v1/jobs)",
        "",
        "| clients | accepted/s | p50 ms | p90 ms | p99 ms | max ms | failures | accepted | "
        "lost | load before -> after (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["submit"]:
        j = s["jobs"]
        lines.append(
            f"| {s['users']} | {s['ok_per_s']} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | "
            f"{s['p99_ms']:.0f} | {s['max_ms']:.0f} | {s['failures']} | {j['accepted']} | "
            f"{j['lost']} | {s['load_before'][0]} -> {s['load_after'][0]} |"
        )
    lines += [
        "",
        "## Status polls (GET /v1/jobs/{id})",
        "",
        "| clients | polls/s | p50 ms | p99 ms | failures | load before (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["poll"]:
        lines.append(
            f"| {s['users']} | {s['ok_per_s']} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | "
            f"{s['failures']} | {s['load_before'][0]} |"
        )
    if "profile" in r:
        p = r["profile"]
        lines += [
            "",
            f"## Where the API's time went (py-spy, {p['samples']} samples, largest level)",
            "",
            "| function (own time) | % |",
            "|---|---|",
        ]
        lines += [f"| `{name}` | {pct} |" for name, pct in p["own_pct"][:15]]
        lines += ["", "| function (total time, callees included) | % |", "|---|---|"]
        lines += [f"| `{name}` | {pct} |" for name, pct in p["total_pct"][:20]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
