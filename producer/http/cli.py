"""``lcm-api``: serve the HTTP API, and create, list and revoke its API keys."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone

from pydantic import ValidationError

from lcm_fleet.settings import settings_problems
from producer.http.auth import KeyStore
from producer.http.settings import ApiSettings


def _settings() -> ApiSettings:
    try:
        return ApiSettings()  # type: ignore[call-arg]  # the pepper comes from the environment
    except ValidationError as e:
        raise SystemExit(
            f"lcm-api: settings are not valid: {'; '.join(settings_problems(e))}\n"
            "LCM_API_KEY_PEPPER must be set (a long random secret, e.g. `openssl rand -hex 32`)"
        ) from None


def _keys(settings: ApiSettings) -> KeyStore:
    return KeyStore(settings.redis_client(settings.records_url, socket_timeout=10), settings)


def _when(ts: float | None) -> str:
    return (
        "-"
        if ts is None
        else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from producer.http.server import serve

    settings = _settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(
        settings,
        host=args.host or settings.api_host,
        port=args.port if args.port is not None else settings.api_port,
        workers=args.workers if args.workers is not None else settings.api_workers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from producer.http.auth import webhook_secret

    settings = _settings()
    record, key = _keys(settings).create(
        args.name,
        admin=args.admin,
        rate_per_minute=args.rate_per_minute,
        max_in_flight=args.max_in_flight,
    )
    secret = webhook_secret(settings, record.key_id).decode()
    if args.quiet:
        print(key)
        return 0
    print(f"key id:          {record.key_id}")
    print(f"name:            {record.name}{' (admin)' if record.admin else ''}")
    print(
        f"limits:          {record.rate_per_minute} requests/min, "
        f"{record.max_in_flight} jobs in flight"
    )
    print(f"API key:         {key}")
    print(f"webhook secret:  {secret}")
    print("Both are shown once; only a digest of the key is stored.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = _keys(_settings()).list()
    print(
        f"{'KEY ID':<16}  {'NAME':<20} {'SCOPE':<6} {'RATE/MIN':>8} {'IN FLIGHT':>9}  "
        f"{'CREATED':<20} REVOKED"
    )
    for k in keys:
        print(
            f"{k.key_id:<16}  {k.name[:20]:<20} {'admin' if k.admin else 'own':<6} "
            f"{k.rate_per_minute:>8} {k.max_in_flight:>9}  {_when(k.created_at):<20} "
            f"{_when(k.revoked_at)}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if not _keys(_settings()).revoke(args.key_id):
        print(
            f"lcm-api: no key {args.key_id!r} to revoke (unknown or already revoked)",
            file=sys.stderr,
        )
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcm-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default=None, help="default LCM_API_HOST")
    serve.add_argument("--port", type=int, default=None, help="default LCM_API_PORT")
    serve.add_argument(
        "--workers", type=_positive, default=None, help="uvicorn processes; default LCM_API_WORKERS"
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-access-log", action="store_true")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints it once")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may read and cancel every job")
    create.add_argument(
        "--rate-per-minute",
        type=_positive,
        default=None,
        help="default LCM_DEFAULT_RATE_PER_MINUTE",
    )
    create.add_argument(
        "--max-in-flight",
        type=_positive,
        default=None,
        help="queued + running jobs; default LCM_DEFAULT_MAX_IN_FLIGHT",
    )
    create.add_argument("--quiet", action="store_true", help="print only the key")
    create.set_defaults(func=cmd_create)
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(func=cmd_list)
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
