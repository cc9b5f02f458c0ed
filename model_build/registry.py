"""Versioned model artifacts in S3: publish, list, resolve and pull.

Layout under the store's key prefix::

    models/<name>/<version>/<file>     every file of the artifact; manifest.json goes up last
    models/<name>/latest.json          the alias: {"name", "version", "manifest_sha256",
                                       "published_at"}, written only after every object of
                                       the version is uploaded and verified

A version is the first 16 hex digits of the sha256 of the artifact's ``manifest.json``; the
manifest lists the size and sha256 of every file, so the version names the content. Every
object carries its sha256 as ``x-amz-meta-sha256``: small files go up with ``put_object`` and
Content-MD5 (the store checks the body, we check the ETag), large ones with boto3's multi-part
``upload_file`` and are checked afterwards by HEAD (size and the stored sha256). Re-publishing
a version skips objects already present with the right size and sha256.

``pull`` downloads a version once into ``CACHE/<name>/<version>/``: into a temporary folder
beside it, every file checked against the downloaded manifest (whose own sha256 must match the
version), then renamed into place; an ``fcntl.flock`` lock file serialises workers on one
machine. The worker verifies the cached folder again before it serves.

The worker imports this module too: only the standard library at module level (boto3,
botocore and tqdm are imported where they are used), and nothing from ``worker``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from lcm_fleet.artifact.manifest import (
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    sha256_bytes,
    sha256_file,
    verify_files,
)
from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.errors import ManifestError
from lcm_fleet.keys import (
    DEFAULT_ALIAS,
    alias_key,
    models_root,
    name_prefix,
    object_key,
    version_prefix,
)
from lcm_fleet.storage import error_code, is_transient, s3_uri
from model_build.errors import BuildError, BuildInputError

logger = logging.getLogger(__name__)
T = TypeVar("T")

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RULE = "1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or a digit"
VERSION_LENGTH = 16
#: Files at least this big go up as multi-part uploads, checked by HEAD afterwards.
LARGE_FILE_BYTES = 64 * 1024 * 1024
#: ``x-amz-meta-*`` keys on every object we write.
META_SHA256 = "sha256"
META_PUBLISHED_AT = "published-at"
DEFAULT_BACKOFF = Backoff(base_s=0.5, cap_s=8.0, attempts=4)

_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(rf"[0-9a-f]{{{VERSION_LENGTH}}}")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


class RegistryError(BuildError):
    """Base of the model registry's errors."""


class RegistryInputError(RegistryError, BuildInputError):
    """A name, reference or local artifact that cannot be used; the message says how to fix it."""


class UnknownModelError(RegistryInputError):
    """No such model name, version or alias in the store."""


class RegistryStorageError(RegistryError):
    """The object store refused or failed a request."""


class TransientRegistryError(RegistryStorageError):
    """A storage fault worth retrying: connection, timeout, 5xx, throttling, checksum mismatch."""


class IntegrityError(RegistryError):
    """Published objects do not match their manifest or their version."""


# --- names, references, keys -------------------------------------------------------------


def validate_name(value: object, field_name: str = "name") -> str:
    """Return ``value`` if it is a valid model name, else raise RegistryInputError."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise RegistryInputError(
            f"{field_name}={value!r} is not a valid model name: use {NAME_RULE} "
            "(e.g. 'dreamshaper-int8')"
        )
    return value


def is_version(value: str) -> bool:
    return bool(_VERSION_RE.fullmatch(value))


def validate_alias(value: object) -> str:
    """An alias such as ``latest``: a valid name that cannot be mistaken for a version."""
    alias = validate_name(value, "alias")
    if is_version(alias):
        raise RegistryInputError(
            f"alias={alias!r} looks like a version ({VERSION_LENGTH} hex digits): "
            "choose another alias, e.g. 'latest' or 'stable'"
        )
    return alias


def version_of(manifest_sha256: str) -> str:
    """The version of an artifact whose manifest.json has this sha256."""
    return manifest_sha256[:VERSION_LENGTH]


@dataclass(frozen=True)
class ModelRef:
    """``name@tag``: the tag is a version (16 hex digits) or an alias such as ``latest``."""

    name: str
    tag: str

    @property
    def version(self) -> str | None:
        return self.tag if is_version(self.tag) else None

    def __str__(self) -> str:
        return f"{self.name}@{self.tag}"


def parse_ref(ref: str | ModelRef) -> ModelRef:
    """Parse ``NAME@VERSION`` or ``NAME@ALIAS`` (``NAME@latest``)."""
    if isinstance(ref, ModelRef):
        return ref
    how = f"write NAME@latest or NAME@VERSION (VERSION: {VERSION_LENGTH} hex digits)"
    if not isinstance(ref, str) or ref.count("@") != 1:
        raise RegistryInputError(f"model reference {ref!r} is not NAME@TAG: {how}")
    name, tag = ref.split("@")
    validate_name(name, f"model reference {ref!r}: name")
    if not tag:
        raise RegistryInputError(f"model reference {ref!r} has no tag after '@': {how}")
    if not is_version(tag) and not _NAME_RE.fullmatch(tag):
        raise RegistryInputError(
            f"model reference {ref!r}: tag {tag!r} is neither a version "
            f"({VERSION_LENGTH} lowercase hex digits) nor an alias ({NAME_RULE}): {how}"
        )
    return ModelRef(name=name, tag=tag)


def looks_like_ref(value: str) -> bool:
    """True when ``value`` parses as ``NAME@TAG`` (callers check for a local folder first)."""
    try:
        parse_ref(value)
    except RegistryInputError:
        return False
    return True


def _safe_rel(rel: str) -> bool:
    """A relative POSIX path that stays inside its folder."""
    path = PurePosixPath(rel)
    return (
        bool(rel)
        and not path.is_absolute()
        and "\\" not in rel
        and all(part not in ("", ".", "..") for part in rel.split("/"))
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the store: one bucket, classified errors, bounded retries ---------------------------


def _is_not_found(error: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code, status = error_code(error)
    return code in _NOT_FOUND_CODES or status == 404


def classify(error: Exception, what: str) -> RegistryStorageError:
    """Wrap a boto3/botocore error as transient (worth retrying) or permanent."""
    if isinstance(error, RegistryStorageError):
        return error
    code, status = error_code(error)
    cls = TransientRegistryError if is_transient(error) else RegistryStorageError
    return cls(f"{what}: {code or status or type(error).__name__}: {error}")


class _Store:
    def __init__(self, client: Any, bucket: str, backoff: Backoff | None) -> None:
        self.client = client
        self.bucket = bucket
        self.backoff = backoff or DEFAULT_BACKOFF

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` with bounded, jittered retries; storage errors come out classified."""

        def once() -> T:
            try:
                return fn()
            except RegistryError:
                raise
            except Exception as e:
                raise classify(e, what) from e

        return call_with_backoff(
            once, transient=(TransientRegistryError,), backoff=self.backoff, what=what
        )

    def head(self, key: str) -> dict[str, Any] | None:
        def once() -> dict[str, Any] | None:
            try:
                return dict(self.client.head_object(Bucket=self.bucket, Key=key))
            except Exception as e:
                if _is_not_found(e):
                    return None
                raise

        return self.retry(f"head {self.uri(key)}", once)

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        def once() -> tuple[bytes, dict[str, Any]] | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except Exception as e:
                if _is_not_found(e):
                    return None
                raise
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            return data, dict(response)

        return self.retry(f"get {self.uri(key)}", once)

    def put_bytes(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        """One put with Content-MD5, its ETag checked; retried on transient faults."""
        md5 = hashlib.md5(data)

        def once() -> None:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                Metadata=metadata,
            )
            etag = str(response.get("ETag", "")).strip('"')
            if etag and etag != md5.hexdigest():
                raise TransientRegistryError(
                    f"put {self.uri(key)}: stored ETag {etag} != md5 {md5.hexdigest()}"
                )

        self.retry(f"put {self.uri(key)}", once)

    def list(self, prefix: str) -> tuple[list[str], list[dict[str, Any]]]:
        """(sub-prefixes, objects) directly under ``prefix``."""

        def once() -> tuple[list[str], list[dict[str, Any]]]:
            prefixes: list[str] = []
            objects: list[dict[str, Any]] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                objects += list(page.get("Contents", []))
            return prefixes, objects

        return self.retry(f"list {self.uri(prefix)}", once)


# --- publish -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    manifest_sha256: str
    bucket: str
    #: Key prefix of the version's objects (ends with '/').
    key_prefix: str
    #: Objects of the version, manifest.json included, and their total size.
    files: int
    bytes: int
    uploaded: int
    skipped: int
    #: The alias written (None when publishing without one) and its object key.
    alias: str | None
    alias_key: str | None
    published_at: str
    duration_s: float

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key_prefix)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class _Upload:
    rel: str
    path: Path
    size: int
    sha256: str
    stat: tuple[int, int]
    metadata: dict[str, str] = field(default_factory=dict)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class _Progress:
    """A tqdm bar over bytes when tqdm is installed and wanted; otherwise nothing."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with lcm-fleet[build]
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _local_artifact(folder: Path) -> tuple[Manifest, list[_Upload]]:
    """Verify the folder against its manifest; the uploads, data files first, manifest last."""
    try:
        manifest = read_manifest(folder)
        verify_files(folder, manifest)
    except ManifestError as e:
        raise RegistryInputError(f"refusing to publish {folder}: {e}") from e
    refusal = manifest.gate_refusal("publish", folder)
    if refusal is not None:
        raise RegistryInputError(refusal)
    uploads = []
    for rel, entry in sorted(manifest.files.items()):
        if not _safe_rel(rel):
            raise RegistryInputError(
                f"refusing to publish {folder}: manifest lists {rel!r}, "
                "which is not a relative path inside the artifact; rebuild it"
            )
        path = folder / rel
        uploads.append(_Upload(rel, path, entry.bytes, entry.sha256, _stat(path)))
    manifest_path = folder / MANIFEST_NAME
    uploads.append(
        _Upload(
            MANIFEST_NAME,
            manifest_path,
            manifest_path.stat().st_size,
            manifest.sha256,
            _stat(manifest_path),
        )
    )
    return manifest, uploads


def _unchanged(item: _Upload) -> None:
    if _stat(item.path) != item.stat:
        raise RegistryInputError(
            f"{item.path} changed while it was being published: "
            "publish again once nothing writes to the artifact"
        )


def _upload(
    store: _Store, item: _Upload, key: str, large_file_bytes: int, progress: _Progress
) -> bool:
    """Upload one object unless it is already there; True if it was uploaded."""
    head = store.head(key)
    if (
        head is not None
        and int(head.get("ContentLength", -1)) == item.size
        and (head.get("Metadata") or {}).get(META_SHA256) == item.sha256
    ):
        progress.update(item.size)
        return False
    metadata = {META_SHA256: item.sha256, **item.metadata}
    if item.size < large_file_bytes:
        data = item.path.read_bytes()
        if len(data) != item.size or sha256_bytes(data) != item.sha256:
            raise RegistryInputError(
                f"{item.path} changed since it was verified against the manifest: "
                "publish again once nothing writes to the artifact"
            )
        content_type = (
            "application/json" if item.rel.endswith(".json") else ("application/octet-stream")
        )
        store.put_bytes(key, data, content_type, metadata)
        progress.update(item.size)
        return True
    _upload_large(store, item, key, metadata, large_file_bytes, progress)
    return True


def _upload_large(
    store: _Store,
    item: _Upload,
    key: str,
    metadata: dict[str, str],
    large_file_bytes: int,
    progress: _Progress,
) -> None:
    """Multi-part upload, then HEAD: the stored size and sha256 metadata must match."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=large_file_bytes,
        multipart_chunksize=max(8 * 1024 * 1024, large_file_bytes // 8),
        max_concurrency=4,
    )

    def once() -> None:
        sent = 0

        def callback(n: int) -> None:
            nonlocal sent
            sent += n
            progress.update(n)

        try:
            _unchanged(item)
            store.client.upload_file(
                str(item.path),
                store.bucket,
                key,
                ExtraArgs={"Metadata": metadata, "ContentType": "application/octet-stream"},
                Config=config,
                Callback=callback,
            )
            _unchanged(item)
        except BaseException:
            progress.update(-sent)
            raise
        head = store.client.head_object(Bucket=store.bucket, Key=key)
        stored_size = int(head.get("ContentLength", -1))
        stored_sha = (head.get("Metadata") or {}).get(META_SHA256)
        if stored_size != item.size or stored_sha != item.sha256:
            progress.update(-sent)
            raise TransientRegistryError(
                f"upload {store.uri(key)}: stored {stored_size} bytes with sha256 "
                f"{stored_sha}, expected {item.size} bytes with sha256 {item.sha256}"
            )

    store.retry(f"upload {store.uri(key)}", once)


def publish(
    artifact_dir: Path | str,
    name: str,
    client: Any,
    bucket: str,
    prefix: str = "",
    progress: bool = True,
    alias: str | None = DEFAULT_ALIAS,
    *,
    large_file_bytes: int = LARGE_FILE_BYTES,
    backoff: Backoff | None = None,
) -> PublishResult:
    """Upload a verified artifact as ``name@<version>``, then point ``alias`` at it.

    The alias object is written only after every object of the version is uploaded and
    verified, so readers of the alias never see a half-published version. Publishing a
    version again uploads only what is missing or different, then rewrites the alias.
    """
    t0 = time.perf_counter()
    validate_name(name)
    if alias is not None:
        validate_alias(alias)
    folder = Path(artifact_dir)
    if not folder.is_dir():
        raise RegistryInputError(
            f"artifact={str(folder)!r} is not a folder: pass an artifact built with "
            "`lcm-build build` (a folder with manifest.json)"
        )
    manifest, uploads = _local_artifact(folder)
    version = version_of(manifest.sha256)
    store = _Store(client, bucket, backoff)
    published_at = _now()
    uploads[-1].metadata = {META_PUBLISHED_AT: published_at}
    total = sum(item.size for item in uploads)
    logger.info(
        "publishing %s as %s@%s: %d files, %d bytes, to %s",
        folder,
        name,
        version,
        len(uploads),
        total,
        store.uri(version_prefix(prefix, name, version)),
    )
    bar = _Progress(total, f"publish {name}@{version}", progress)
    uploaded = skipped = 0
    try:
        for item in uploads:
            key = object_key(prefix, name, version, item.rel)
            if _upload(store, item, key, large_file_bytes, bar):
                uploaded += 1
            else:
                skipped += 1
    finally:
        bar.close()

    written_alias_key = None
    if alias is not None:
        written_alias_key = alias_key(prefix, name, alias)
        body = {
            "name": name,
            "version": version,
            "manifest_sha256": manifest.sha256,
            "published_at": published_at,
        }
        data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        store.put_bytes(
            written_alias_key, data, "application/json", {META_SHA256: sha256_bytes(data)}
        )
    result = PublishResult(
        name=name,
        version=version,
        manifest_sha256=manifest.sha256,
        bucket=bucket,
        key_prefix=version_prefix(prefix, name, version),
        files=len(uploads),
        bytes=total,
        uploaded=uploaded,
        skipped=skipped,
        alias=alias,
        alias_key=written_alias_key,
        published_at=published_at,
        duration_s=round(time.perf_counter() - t0, 3),
    )
    logger.info(
        "published %s at %s (%d uploaded, %d already there)%s",
        result.ref,
        result.uri,
        uploaded,
        skipped,
        f"; {alias} -> {version}" if alias else "",
    )
    return result


# --- list and resolve --------------------------------------------------------------------


def list_names(
    client: Any, bucket: str, prefix: str = "", *, backoff: Backoff | None = None
) -> list[str]:
    """Every model name with at least one object in the store."""
    store = _Store(client, bucket, backoff)
    root = models_root(prefix)
    prefixes, _ = store.list(root)
    names = [p[len(root) :].rstrip("/") for p in prefixes]
    return sorted(n for n in names if _NAME_RE.fullmatch(n))


def _read_alias(store: _Store, prefix: str, name: str, alias: str) -> dict[str, Any] | None:
    key = alias_key(prefix, name, alias)
    got = store.get(key)
    if got is None:
        return None
    try:
        data = json.loads(got[0])
    except ValueError as e:
        raise IntegrityError(f"{store.uri(key)} is not valid JSON: {e}; publish again") from e
    if (
        not isinstance(data, dict)
        or data.get("name") != name
        or not isinstance(data.get("version"), str)
        or not is_version(data["version"])
    ):
        raise IntegrityError(
            f"{store.uri(key)} is not an alias of {name!r} to a version: "
            f"{json.dumps(data)[:200]}; publish again to rewrite it"
        )
    return data


def _scan(store: _Store, prefix: str, name: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(versions, {alias: alias document}) of one name."""
    base = name_prefix(prefix, name)
    prefixes, objects = store.list(base)
    versions = sorted(v for v in (p[len(base) :].rstrip("/") for p in prefixes) if is_version(v))
    aliases: dict[str, dict[str, Any]] = {}
    for obj in objects:
        rel = str(obj["Key"])[len(base) :]
        if rel.endswith(".json") and _NAME_RE.fullmatch(rel[: -len(".json")]):
            doc = _read_alias(store, prefix, name, rel[: -len(".json")])
            if doc is not None:
                aliases[rel[: -len(".json")]] = doc
    return versions, aliases


def _unknown_name(store: _Store, prefix: str, name: str) -> UnknownModelError:
    names = list_names(store.client, store.bucket, prefix, backoff=store.backoff)
    known = ", ".join(names) if names else "none"
    return UnknownModelError(
        f"unknown model name {name!r}: nothing is published under "
        f"{store.uri(name_prefix(prefix, name))} (published names: {known}); "
        "check the name, LCM_S3_BUCKET and LCM_S3_PREFIX, or publish it with "
        "`lcm-build publish ARTIFACT NAME`"
    )


def _version_time(response: dict[str, Any]) -> str:
    stamp = (response.get("Metadata") or {}).get(META_PUBLISHED_AT)
    if stamp:
        return str(stamp)
    modified = response.get("LastModified")
    if isinstance(modified, datetime):
        return (
            modified.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    return ""


def list_versions(
    name: str | None, client: Any, bucket: str, prefix: str = "", *, backoff: Backoff | None = None
) -> list[dict[str, Any]]:
    """Every complete published version (manifest.json present), by name, oldest first.

    Each row: name, version, manifest_sha256, published_at, precision, shape, latest,
    aliases, files, bytes, intact (the manifest's sha256 matches the version), uri, and the
    manifest's ``quality`` and ``speed`` sections (None when the manifest has none).
    """
    store = _Store(client, bucket, backoff)
    if name is not None:
        validate_name(name)
        names = [name]
    else:
        names = list_names(client, bucket, prefix, backoff=store.backoff)
    rows: list[dict[str, Any]] = []
    for model in names:
        versions, aliases = _scan(store, prefix, model)
        if name is not None and not versions and not aliases:
            raise _unknown_name(store, prefix, model)
        by_version: dict[str, list[str]] = {}
        for alias, doc in sorted(aliases.items()):
            by_version.setdefault(doc["version"], []).append(alias)
        model_rows = []
        for version in versions:
            key = object_key(prefix, model, version, MANIFEST_NAME)
            got = store.get(key)
            if got is None:
                logger.info("%s@%s is incomplete (no manifest.json): skipped", model, version)
                continue
            raw, response = got
            sha = sha256_bytes(raw)
            try:
                manifest: Manifest | None = Manifest.from_bytes(raw, store.uri(key))
            except ManifestError as e:
                logger.warning("%s@%s: %s", model, version, e)
                manifest = None
            files = manifest.files if manifest is not None else {}
            shape = manifest.shape if manifest is not None else None
            quality = manifest.quality if manifest is not None else None
            speed = manifest.speed if manifest is not None else None
            model_rows.append(
                {
                    "name": model,
                    "version": version,
                    "manifest_sha256": sha,
                    "published_at": _version_time(response),
                    "precision": manifest.precision if manifest is not None else None,
                    "shape": shape.as_dict() if shape is not None else {},
                    "latest": DEFAULT_ALIAS in by_version.get(version, []),
                    "aliases": by_version.get(version, []),
                    "files": len(files) + 1,
                    "bytes": len(raw) + sum(e.bytes for e in files.values()),
                    "intact": version_of(sha) == version,
                    "uri": store.uri(version_prefix(prefix, model, version)),
                    "quality": quality.as_dict() if quality is not None else None,
                    "speed": speed.as_dict() if speed is not None else None,
                }
            )
        model_rows.sort(key=lambda r: (r["published_at"], r["version"]))
        rows += model_rows
    return rows


def resolve(
    ref: str | ModelRef,
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    backoff: Backoff | None = None,
) -> tuple[str, str]:
    """``name@latest`` / ``name@<alias>`` / ``name@<version>`` -> (name, version) in the store."""
    parsed = parse_ref(ref)
    store = _Store(client, bucket, backoff)
    name = parsed.name
    version = parsed.version
    if version is None:
        doc = _read_alias(store, prefix, name, parsed.tag)
        if doc is None:
            versions, aliases = _scan(store, prefix, name)
            if not versions and not aliases:
                raise _unknown_name(store, prefix, name)
            raise UnknownModelError(
                f"model {name!r} has no alias {parsed.tag!r} "
                f"({store.uri(alias_key(prefix, name, parsed.tag))} does not exist); "
                f"aliases: {', '.join(sorted(aliases)) or 'none'}; "
                f"versions: {', '.join(versions) or 'none'}; "
                f"use {name}@VERSION or publish with --alias {parsed.tag}"
            )
        version = str(doc["version"])
    if store.head(object_key(prefix, name, version, MANIFEST_NAME)) is None:
        versions, aliases = _scan(store, prefix, name)
        if not versions and not aliases:
            raise _unknown_name(store, prefix, name)
        via = "" if parsed.version else f" ({name}@{parsed.tag} points to it)"
        raise UnknownModelError(
            f"unknown version {version!r} of model {name!r}{via}: "
            f"{store.uri(object_key(prefix, name, version, MANIFEST_NAME))} does not exist; "
            f"published versions: {', '.join(versions) or 'none'}"
            + (f"; aliases: {', '.join(sorted(aliases))}" if aliases else "")
        )
    return name, version


# --- pull --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the file is left in place (removing it would race)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cached_path(cache_dir: Path | str, name: str, version: str) -> Path:
    return Path(cache_dir).expanduser() / name / version


def _download_file(store: _Store, key: str, dest: Path, size: int, sha256: str, rel: str) -> None:
    def once() -> None:
        try:
            store.client.download_file(store.bucket, key, str(dest))
        except Exception as e:
            if _is_not_found(e):
                raise IntegrityError(
                    f"{store.uri(key)} is missing: the published version is incomplete; "
                    "publish it again"
                ) from e
            raise
        actual_size = dest.stat().st_size
        actual = sha256_file(dest) if actual_size == size else None
        if actual != sha256:
            found = f"{actual_size} bytes" if actual is None else f"sha256 {actual[:16]}..."
            raise TransientRegistryError(
                f"{rel}: downloaded {store.uri(key)} has {found}, the manifest says "
                f"{size} bytes with sha256 {sha256[:16]}...; if this persists the published "
                "object is damaged: publish the version again"
            )

    store.retry(f"download {store.uri(key)}", once)


def _download_version(store: _Store, prefix: str, name: str, version: str, dest: Path) -> int:
    key = object_key(prefix, name, version, MANIFEST_NAME)
    got = store.get(key)
    if got is None:
        raise UnknownModelError(f"{store.uri(key)} does not exist: {name}@{version} is gone")
    raw = got[0]
    sha = sha256_bytes(raw)
    if version_of(sha) != version:
        raise IntegrityError(
            f"{store.uri(key)} has sha256 {sha[:16]}..., which is not version {version}: "
            "the published manifest was changed; publish the artifact again"
        )
    (dest / MANIFEST_NAME).write_bytes(raw)
    try:
        manifest = read_manifest(dest)
    except ManifestError as e:
        raise IntegrityError(f"{store.uri(key)}: {e}") from e
    total = 0
    for rel, entry in sorted(manifest.files.items()):
        if not _safe_rel(rel):
            raise IntegrityError(
                f"{store.uri(key)} lists {rel!r}, which is not a relative path inside the "
                "artifact; refusing to download it"
            )
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        obj = object_key(prefix, name, version, rel)
        _download_file(store, obj, target, entry.bytes, entry.sha256, rel)
        total += entry.bytes
    return total


def pull(
    ref: str | ModelRef,
    cache_dir: Path | str,
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    backoff: Backoff | None = None,
) -> Path:
    """Download ``ref`` into ``cache_dir/<name>/<version>/`` unless it is there; return it.

    A pinned version already in the cache is returned without asking the store; an alias
    is resolved in the store first. Callers verify the returned folder (the worker does).
    """
    parsed = parse_ref(ref)
    if parsed.version is not None:
        cached = cached_path(cache_dir, parsed.name, parsed.version)
        if cached.is_dir():
            return cached
    name, version = resolve(parsed, client, bucket, prefix, backoff=backoff)
    target = cached_path(cache_dir, name, version)
    if target.is_dir():
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    store = _Store(client, bucket, backoff)
    with _locked(parent / f".{version}.lock"):
        if target.is_dir():  # another process finished it while we waited
            return target
        for stale in parent.glob(f".{version}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent))
        t0 = time.perf_counter()
        try:
            total = _download_version(store, prefix, name, version, tmp)
            tmp.chmod(0o755)  # mkdtemp made it private; the files keep the umask's modes
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info(
        "pulled %s@%s (%d bytes) from %s into %s in %.1fs",
        name,
        version,
        total,
        store.uri(version_prefix(prefix, name, version)),
        target,
        time.perf_counter() - t0,
    )
    return target
