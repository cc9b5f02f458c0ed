"""``lcm schedule ...``: schedules of scheduled bulk runs, from the command line.

    lcm schedule add NAME --cron "0 2 * * *" --source FILE|s3://bucket/key [--timezone TZ]
                 [--template T] [--output-prefix P] [--missed skip|catch_up --catch-up-max N]
                 [--paused] [--steps N ... (job defaults)]
    lcm schedule list [--json]                  lcm schedule show NAME [--runs N] [--json]
    lcm schedule validate FILE [--sources]      lcm schedule apply FILE [--prune] [--dry-run]
    lcm schedule pause|resume|remove NAME       lcm schedule run-now NAME

The CLI's schedules are owned by ``local`` (an HTTP API key owns the ones it creates).
``apply`` checks the whole file first and applies nothing if any schedule has a problem;
schedules missing from the file are kept unless ``--prune`` (then the owner's others are
removed). The runs themselves are made by ``lcm-scheduler``; ``run-now`` queues one here.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import LOCAL_OWNER
from lcm_fleet.schedules import (
    CATCH_UP_MAX,
    DEFAULT_OUTPUT_PREFIX,
    UTC,
    InvalidSchedule,
    MissedPolicy,
    Schedule,
    parse_schedule,
)
from producer.settings import ProducerSettings

ACTIONS = ("add", "list", "show", "validate", "apply", "pause", "resume", "remove", "run-now")


def add_parser(sub: Any) -> None:
    """Register ``lcm schedule`` on ``lcm``'s subcommands."""
    from producer.cli import _add_job_fields  # at call time: producer.cli imports this module

    p = sub.add_parser("schedule", help="schedules of bulk runs: add, list, show, apply a file ...")
    actions = p.add_subparsers(dest="schedule_command", required=True)

    a = actions.add_parser("add", help="create or replace one schedule")
    a.add_argument("name")
    a.add_argument("--cron", required=True, help='5 fields, e.g. "0 2 * * *"')
    a.add_argument("--source", required=True, help="a .jsonl/.csv file or s3://bucket/key")
    a.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Berlin")
    a.add_argument("--template", help="prompt template, e.g. '{prompt}, edition of {date}'")
    a.add_argument("--output-prefix", default=DEFAULT_OUTPUT_PREFIX)
    a.add_argument("--missed", choices=[m.value for m in MissedPolicy], default="skip")
    a.add_argument("--catch-up-max", type=int, help=f"with --missed catch_up: 1..{CATCH_UP_MAX}")
    a.add_argument("--paused", action="store_true", help="create it paused")
    _add_job_fields(a, defaults=True)

    a = actions.add_parser("list", help="every schedule")
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("show", help="a schedule, its next slot and its last runs")
    a.add_argument("name")
    a.add_argument("--runs", type=int, default=10, help="how many of the last runs")
    a.add_argument("--json", action="store_true")

    a = actions.add_parser("validate", help="check a schedule file; apply nothing")
    a.add_argument("file", type=Path)
    a.add_argument(
        "--sources", action="store_true", help="also read each source and check its rows"
    )

    a = actions.add_parser("apply", help="check a schedule file as a whole, then apply it")
    a.add_argument("file", type=Path)
    a.add_argument("--prune", action="store_true", help="remove local schedules not in the file")
    a.add_argument("--dry-run", action="store_true", help="check and report; change nothing")

    for action, text in (
        ("pause", "stop firing it (runs already queued go on)"),
        ("resume", "fire it again, from its next slot"),
        ("remove", "delete it (its batches stay)"),
        ("run-now", "queue a run now, whatever the cron says"),
    ):
        actions.add_parser(action, help=text).add_argument("name")


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _schedule_line(s: Schedule) -> str:
    state = "enabled" if s.enabled else "paused"
    return f"{s.name:24} {s.cron:16} {s.timezone:20} {state:8} {s.missed}  {s.source}"


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    from producer.cli import _job_fields

    return _job_fields(args)


def _add(args: argparse.Namespace, ops: Any) -> int:
    payload: dict[str, Any] = {
        "name": args.name,
        "cron": args.cron,
        "timezone": args.timezone,
        "source": args.source
        if args.source.startswith("s3://")
        else str(Path(args.source).expanduser().resolve()),
        "output_prefix": args.output_prefix,
        "missed": args.missed,
        "enabled": not args.paused,
        "defaults": _defaults(args),
    }
    if args.template is not None:
        payload["template"] = args.template
    if args.catch_up_max is not None:
        payload["catch_up_max"] = args.catch_up_max
    schedule = parse_schedule(payload, owner=LOCAL_OWNER)
    outcome = ops.put(schedule)
    print(f"schedule {schedule.name}: {outcome}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace, ops: Any) -> int:
    view = ops.view(args.name, LOCAL_OWNER, runs=args.runs)
    if view is None:
        print(f"lcm: no schedule {args.name!r} (see `lcm schedule list`)", file=sys.stderr)
        return 1
    if args.json:
        out = {
            "schedule": view.schedule.model_dump(mode="json"),
            "next_slot": view.next_slot.isoformat() if view.next_slot else None,
            "last_slot": view.state.last_slot if view.state else None,
            "runs": [
                {
                    **v.run.model_dump(mode="json"),
                    "batch": v.batch.model_dump(mode="json") if v.batch else None,
                }
                for v in view.runs
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    s = view.schedule
    print(f"schedule {s.name} ({'enabled' if s.enabled else 'paused'}, owner {s.owner})")
    print(f"  cron {s.cron!r} in {s.timezone}; missed slots: {s.missed}", end="")
    print(f" (at most {s.catch_up_max})" if s.catch_up_max else "")
    print(f"  source {s.source}" + (f"; template {s.template!r}" if s.template else ""))
    print(f"  output {s.output_prefix}; job defaults {s.defaults.given() or 'none'}")
    nxt = view.next_slot.astimezone(s.zone).isoformat() if view.next_slot else "- (paused)"
    print(f"  next slot {nxt}")
    if not view.runs:
        print("  no runs yet")
        return 0
    print(
        f"  {'SLOT':17} {'TRIGGER':9} {'RUN':10} {'BATCH':40} {'JOBS':>5} "
        f"{'QUEUED':>6} {'RUNNING':>7} {'OK':>5} {'FAILED':>6} {'CANCEL':>6}  FINISHED"
    )
    for v in view.runs:
        r, b = v.run, v.batch
        counts = (
            f"{b.counts.queued:>6} {b.counts.running:>7} {b.counts.succeeded:>5} "
            f"{b.counts.failed:>6} {b.counts.canceled:>6}  {_fmt_time(b.finished_at)}"
            if b is not None
            else f"{'(batch record expired or not created)':>34}"
        )
        print(
            f"  {r.slot:17} {r.trigger.value:9} {r.state.value:10} {r.batch_id:40} "
            f"{r.jobs:>5} {counts}"
        )
        if r.reason:
            print(f"      {r.reason}")
    return 0


def _validate(args: argparse.Namespace, settings: ProducerSettings) -> int:
    from producer.schedules.files import read_schedule_file
    from producer.schedules.runner import source_rows

    schedules = read_schedule_file(args.file, LOCAL_OWNER)
    problems = []
    for s in schedules:
        line = f"schedule {s.name}: next slot {s.clock.next_after(datetime.now(UTC)).isoformat()}"
        if args.sources:
            slot = s.clock.next_after(datetime.now(UTC))
            try:
                with source_rows(s, slot, settings, s.batch_id(slot)) as source:
                    line += f", {source.checked.rows} row(s) in its source"
            except InvalidJob as e:
                problems.append(f"schedule {s.name!r}: field 'source': {e}")
        print(line)
    if problems:
        raise InvalidSchedule("\n  ".join([f"{args.file}: {len(problems)} problem(s):", *problems]))
    print(f"{args.file}: {len(schedules)} schedule(s) valid", file=sys.stderr)
    return 0


def _apply(args: argparse.Namespace, ops: Any) -> int:
    from producer.schedules.files import read_schedule_file

    schedules = read_schedule_file(args.file, LOCAL_OWNER)
    if args.dry_run:
        names = {s.name for s in ops.list(LOCAL_OWNER)}
        for s in schedules:
            print(f"schedule {s.name}: {'update' if s.name in names else 'create'} (dry run)")
        if args.prune:
            for name in sorted(names - {s.name for s in schedules}):
                print(f"schedule {name}: remove (dry run)")
        return 0
    report = ops.apply(schedules, LOCAL_OWNER, prune=args.prune)
    for name, outcome in report.outcomes.items():
        print(f"schedule {name}: {outcome}")
    for name in report.removed:
        print(f"schedule {name}: removed")
    return 0


def run(args: argparse.Namespace, settings: ProducerSettings) -> int:
    from producer.schedules.manage import Schedules

    action = args.schedule_command
    if action == "validate":
        return _validate(args, settings)
    ops = Schedules(settings)
    if action == "add":
        return _add(args, ops)
    if action == "apply":
        return _apply(args, ops)
    if action == "list":
        schedules = ops.list(LOCAL_OWNER)
        if args.json:
            print(json.dumps([s.model_dump(mode="json") for s in schedules], indent=2))
        else:
            for s in schedules:
                print(_schedule_line(s))
        return 0
    if action == "show":
        return _show(args, ops)
    name = args.name
    if action in ("pause", "resume"):
        changed = ops.set_enabled(name, LOCAL_OWNER, enabled=action == "resume")
        if changed is None:
            print(f"lcm: no schedule {name!r}", file=sys.stderr)
            return 1
        print(f"schedule {name}: {'enabled' if changed.enabled else 'paused'}", file=sys.stderr)
        return 0
    if action == "remove":
        if not ops.remove(name, LOCAL_OWNER):
            print(f"lcm: no schedule {name!r}", file=sys.stderr)
            return 1
        print(f"schedule {name}: removed", file=sys.stderr)
        return 0
    if action == "run-now":
        run_ = ops.run_now(name, LOCAL_OWNER)
        if run_ is None:
            print(f"lcm: no schedule {name!r}", file=sys.stderr)
            return 1
        print(run_.batch_id)
        print(
            f"schedule {name}: run {run_.slot} {run_.state} ({run_.jobs} job(s) in batch "
            f"{run_.batch_id}, output {run_.output_prefix})"
            + (f": {run_.reason}" if run_.reason else ""),
            file=sys.stderr,
        )
        return 0 if run_.state.value == "submitted" else 1
    raise AssertionError(action)
