"""Every key lcm-fleet writes: Redis keys of the worker's bookkeeping, and S3 object keys.

One module, so that a reader finds what lives where, and an operator what to back up,
inspect or purge. Object keys are deterministic per job and per artifact version, so a
redelivered job overwrites its own objects and never creates new ones.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- Redis

#: Prefix of every Redis key lcm-fleet writes (beside Celery's and kombu's own).
REDIS_PREFIX = "lcm-fleet"
#: List of queue items the worker could not decode, newest first, with the reason.
DEAD_LETTER_KEY = f"{REDIS_PREFIX}:dead-letter"
#: Prefix of the per-worker-process keys of worker/consumer/reclaim.py.
INCARNATION_PREFIX = f"{REDIS_PREFIX}:incarnation"
#: Hash: incarnation id -> worker name, of every worker process that may hold messages.
INCARNATIONS_KEY = f"{INCARNATION_PREFIX}s"
#: Set of the incarnations that advertise what they serve (lcm_fleet/served.py); each one's
#: advert is :func:`advert_key`, which expires LCM_HEARTBEAT_TTL_S after its last beat.
ADVERTS_KEY = f"{REDIS_PREFIX}:adverts"
#: Set of every queue a producer has published render jobs to (lcm_fleet/served.py), so that
#: the queue-depth gauge and the workers' warnings see queues that nothing consumes.
QUEUES_KEY = f"{REDIS_PREFIX}:queues"


def advert_key(incarnation: str) -> str:
    """JSON of what one worker incarnation serves: its queues, sizes and model."""
    return f"{REDIS_PREFIX}:advert:{incarnation}"


#: Prefix of job records (lcm_fleet/records.py): ``lcm-fleet:job:<id>``, a hash.
JOB_PREFIX = f"{REDIS_PREFIX}:job:"
#: Prefix of batch records: ``lcm-fleet:batch:<id>``, a hash, and ``...:jobs``, its job ids.
BATCH_PREFIX = f"{REDIS_PREFIX}:batch:"


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def job_webhooks_key(job_id: str) -> str:
    """List of the job's webhook delivery attempts, oldest first."""
    return f"{JOB_PREFIX}{job_id}:webhooks"


def batch_key(batch_id: str) -> str:
    return f"{BATCH_PREFIX}{batch_id}"


def batch_webhooks_key(batch_id: str) -> str:
    """List of the batch's webhook delivery attempts, oldest first."""
    return f"{BATCH_PREFIX}{batch_id}:webhooks"


def batch_jobs_key(batch_id: str) -> str:
    """List of the batch's job ids in submission order."""
    return f"{BATCH_PREFIX}{batch_id}:jobs"


def deliveries_key(task_id: str, retries: int) -> str:
    """Counter of deliveries of one job at one retry (worker/consumer/deliveries.py)."""
    return f"{REDIS_PREFIX}:deliveries:{task_id}:{retries}"


def held_key(incarnation: str) -> str:
    """Hash: delivery tag -> job id, of the messages that worker incarnation holds."""
    return f"{INCARNATION_PREFIX}:{incarnation}:held"


def alive_key(incarnation: str) -> str:
    """The incarnation's heartbeat; it expires LCM_HEARTBEAT_TTL_S after the last beat."""
    return f"{INCARNATION_PREFIX}:{incarnation}:alive"


# ---------------------------------------------------------------- schedules

#: Set of every schedule's name; each one's definition is :func:`schedule_key`.
SCHEDULES_KEY = f"{REDIS_PREFIX}:schedules"
#: Prefix of schedule keys: ``lcm-fleet:schedule:<name>`` (JSON of its definition), and
#: ``...:state``, ``...:runs``, ``...:run:<slot>`` beside it.
SCHEDULE_PREFIX = f"{REDIS_PREFIX}:schedule:"
#: celery-redbeat's key prefix: its entries (``lcm-fleet:redbeat:<name>``), its schedule
#: sorted set (``lcm-fleet:redbeat::schedule``) and the beat lock (``...::lock``).
REDBEAT_PREFIX = f"{REDIS_PREFIX}:redbeat:"


def schedule_key(name: str) -> str:
    return f"{SCHEDULE_PREFIX}{name}"


def schedule_state_key(name: str) -> str:
    """Hash: the last slot claimed (Unix seconds), when it was armed, created, changed."""
    return f"{SCHEDULE_PREFIX}{name}:state"


def schedule_runs_key(name: str) -> str:
    """Sorted set of the schedule's runs: slot id scored by the slot's Unix time."""
    return f"{SCHEDULE_PREFIX}{name}:runs"


def schedule_run_key(name: str, slot: str) -> str:
    """Hash of one run (schedule, slot): created once, atomically (SET-if-absent)."""
    return f"{SCHEDULE_PREFIX}{name}:run:{slot}"


# ---------------------------------------------------------------- S3 objects

_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]*$")
#: The alias that ``lcm-build publish`` moves by default.
DEFAULT_ALIAS = "latest"


def normalise_prefix(prefix: str) -> str:
    """``LCM_S3_PREFIX`` as a key prefix: ``""`` or ``"a/b/"``."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"storage prefix {prefix!r} may hold only letters, digits, '.', '_', '-' and '/'"
        )
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def jobs_root(prefix: str, output_prefix: str | None = None) -> str:
    """The folder of jobs' folders: ``<prefix>jobs/``, or ``<prefix><output_prefix>/``."""
    root = f"{output_prefix.strip('/')}/" if output_prefix else "jobs/"
    return f"{normalise_prefix(prefix)}{root}"


def job_prefix(prefix: str, job_id: str, output_prefix: str | None = None) -> str:
    """Where a job's objects go: ``<prefix>jobs/<job_id>/``, or, with the job's
    ``output_prefix`` (a validated relative prefix, lcm_fleet/contract.py),
    ``<prefix><output_prefix>/<job_id>/``."""
    return f"{jobs_root(prefix, output_prefix)}{job_id}/"


def image_key(prefix: str, job_id: str, index: int, output_prefix: str | None = None) -> str:
    return f"{job_prefix(prefix, job_id, output_prefix)}{index:03d}.png"


def result_key(prefix: str, job_id: str, output_prefix: str | None = None) -> str:
    return f"{job_prefix(prefix, job_id, output_prefix)}result.json"


def result_key_beside(image: str) -> str:
    """The result.json of the job that stored the image at key ``image`` (same folder)."""
    return f"{image.rsplit('/', 1)[0]}/result.json"


def batch_manifest_key(prefix: str, batch_id: str, output_prefix: str | None = None) -> str:
    """A batch's output manifest (lcm_fleet/batch_manifest.py): beside its images,
    ``<prefix><output_prefix>/manifest.jsonl``, or ``<prefix>batches/<batch_id>/manifest.jsonl``
    for a batch without an output prefix."""
    root = f"{output_prefix.strip('/')}/" if output_prefix else f"batches/{batch_id}/"
    return f"{normalise_prefix(prefix)}{root}manifest.jsonl"


def models_root(prefix: str) -> str:
    return f"{normalise_prefix(prefix)}models/"


def name_prefix(prefix: str, name: str) -> str:
    return f"{models_root(prefix)}{name}/"


def version_prefix(prefix: str, name: str, version: str) -> str:
    return f"{name_prefix(prefix, name)}{version}/"


def object_key(prefix: str, name: str, version: str, rel: str) -> str:
    return f"{version_prefix(prefix, name, version)}{rel}"


def alias_key(prefix: str, name: str, alias: str = DEFAULT_ALIAS) -> str:
    return f"{name_prefix(prefix, name)}{alias}.json"


# ---------------------------------------------------------------- HTTP API (producer/http)

#: Prefix of the HTTP API's keys: API key records, idempotency keys, in-flight counts.
API_PREFIX = f"{REDIS_PREFIX}:api"
#: Set of every API key id ever created (revoked ones stay, marked).
API_KEYS_KEY = f"{API_PREFIX}:keys"
#: Prefix of the rate limiter's moving windows (the ``limits`` library adds its own).
RATE_LIMIT_PREFIX = f"{API_PREFIX}:rate"
#: Prefix of per-owner counts of queued + running jobs, kept by lcm_fleet/records.py.
IN_FLIGHT_PREFIX = f"{REDIS_PREFIX}:in-flight:"


def api_key_key(key_id: str) -> str:
    """Hash of one API key: name, HMAC digest (never the key), scope, limits, times."""
    return f"{API_PREFIX}:key:{key_id}"


def idempotency_key(owner: str, digest: str) -> str:
    """What one owner's Idempotency-Key (by its sha256) answered: body digest and job id."""
    return f"{API_PREFIX}:idempotency:{owner}:{digest}"


def in_flight_key(owner: str) -> str:
    return f"{IN_FLIGHT_PREFIX}{owner}"


def persistence_warned_key(role: str) -> str:
    """Set (with a TTL) while ``role`` keeps quiet about this Redis having no persistence."""
    return f"{REDIS_PREFIX}:persistence-warned:{role}"
