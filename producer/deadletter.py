"""``lcm dead-letter list|show|purge``: the queue items workers refused (lcm_fleet/dead_letter.py).

lcm dead-letter list [--limit N]   newest first: id, time, kind, queue, size, reason
lcm dead-letter show ID            one entry as JSON (reason, sha256, first bytes)
lcm dead-letter purge --yes        remove every entry
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from lcm_fleet.dead_letter import DeadLetters
from producer.settings import ProducerSettings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dead-letter", help="list, show or purge the queue items workers refused")
    p.add_argument("action", choices=("list", "show", "purge"))
    p.add_argument("entry_id", nargs="?", help="show: the entry's id (from list)")
    p.add_argument("--limit", type=int, default=20, help="list: at most N entries (default 20)")
    p.add_argument("--yes", action="store_true", help="purge: do it (without: only the count)")


def run(args: argparse.Namespace, settings: ProducerSettings) -> int:
    store = DeadLetters(settings.redis_client(socket_timeout=10))
    if args.action == "list":
        entries = store.entries(limit=max(1, args.limit))
        for e in entries:
            at = datetime.fromtimestamp(e.at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{e.id}  {at}  {e.kind.value:<13} {e.queue or '-'}  {e.size}B  {e.reason}")
        print(f"{len(entries)} of {store.count()} entries shown", file=sys.stderr)
        return 0
    if args.action == "show":
        if not args.entry_id:
            print("lcm: dead-letter show needs an entry id (see `lcm dead-letter list`)",
                  file=sys.stderr)  # fmt: skip
            return 2
        entry = store.get(args.entry_id)
        if entry is None:
            print(f"lcm: no dead-letter entry {args.entry_id!r}", file=sys.stderr)
            return 1
        print(entry.model_dump_json(indent=2))
        return 0
    if not args.yes:
        print(f"{store.count()} entries; `lcm dead-letter purge --yes` removes them")
        return 0
    print(f"purged {store.purge()} entries")
    return 0
