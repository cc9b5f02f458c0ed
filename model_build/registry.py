"""The registry's build half: publish an artifact as ``name@<version>``, list what is published.

Names, references, resolve and pull are the kernel's (lcm_fleet.artifact.registry, which
also describes the layout); this module writes into the same :class:`Registry`.

Every object goes up with its sha256 as ``x-amz-meta-sha256``: small files with one
verified put (Content-MD5 in, ETag checked), large ones as multi-part uploads checked by
HEAD (size and the stored sha256). The manifest goes up last, and the alias only after it,
so readers of the alias never see a half-published version. Re-publishing a version skips
objects already present with the right size and sha256.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_files
from lcm_fleet.artifact.manifest import sha256_bytes as _sha256_bytes
from lcm_fleet.artifact.registry import (
    DEFAULT_ALIAS,
    META_PUBLISHED_AT,
    Alias,
    Registry,
    is_safe_rel,
    validate_alias,
    validate_name,
    version_of,
)
from lcm_fleet.errors import ManifestError, RegistryInputError
from lcm_fleet.keys import version_prefix
from lcm_fleet.storage import META_SHA256, s3_uri

logger = logging.getLogger(__name__)

#: Files at least this big go up as multi-part uploads, checked by HEAD afterwards.
LARGE_FILE_BYTES = 64 * 1024 * 1024


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
    def alias_uri(self) -> str | None:
        return s3_uri(self.bucket, self.alias_key) if self.alias_key else None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Upload:
    """One object of the version: a file as it was when verified against the manifest."""

    rel: str
    path: Path
    size: int
    sha256: str
    #: (size, mtime_ns) at verification; a change while publishing refuses the publish.
    stat: tuple[int, int]
    metadata: dict[str, str] = field(default_factory=dict)

    def check_unchanged(self) -> None:
        if _stat(self.path) != self.stat:
            raise RegistryInputError(
                f"{self.path} changed while it was being published: "
                "publish again once nothing writes to the artifact"
            )


@dataclass(frozen=True)
class LocalArtifact:
    """A verified artifact folder: its manifest and the uploads, data files first."""

    folder: Path
    manifest: Manifest
    uploads: tuple[Upload, ...]

    @property
    def version(self) -> str:
        return version_of(self.manifest.sha256)

    @property
    def bytes(self) -> int:
        return sum(item.size for item in self.uploads)


@dataclass(frozen=True)
class Transfer:
    uploaded: int
    skipped: int


def publish(
    registry: Registry,
    artifact_dir: Path | str,
    name: str,
    *,
    alias: str | None = DEFAULT_ALIAS,
    progress: bool = True,
    large_file_bytes: int = LARGE_FILE_BYTES,
) -> PublishResult:
    """Upload a verified artifact as ``name@<version>``, then point ``alias`` at it.

    Publishing a version again uploads only what is missing or different, then rewrites the
    alias. A candidate that failed its quality gate without an override is refused.
    """
    t0 = time.perf_counter()
    # 1. check inputs
    folder = _check_inputs(artifact_dir, name, alias)
    # 2. verify the folder against its manifest, and the manifest's gate decision
    local = local_artifact(folder)
    # 3. stamp the manifest, the version's last object, with the time of publishing
    published_at = _now()
    *files, manifest_upload = local.uploads
    uploads = (*files, replace(manifest_upload, metadata={META_PUBLISHED_AT: published_at}))
    logger.info(
        "publishing %s as %s@%s: %d files, %d bytes, to %s",
        folder,
        name,
        local.version,
        len(uploads),
        local.bytes,
        registry.uri(name, local.version),
    )
    # 4. upload every object that is not there yet, the manifest last
    transfer = _upload_all(registry, name, local.version, uploads, large_file_bytes, progress)
    # 5. point the alias at the complete version
    written_alias_key = None
    if alias is not None:
        doc = Alias(
            name=name,
            version=local.version,
            manifest_sha256=local.manifest.sha256,
            published_at=published_at,
        )
        written_alias_key = _write_alias(registry, alias, doc)
    result = PublishResult(
        name=name,
        version=local.version,
        manifest_sha256=local.manifest.sha256,
        bucket=registry.store.bucket,
        key_prefix=version_prefix(registry.prefix, name, local.version),
        files=len(uploads),
        bytes=local.bytes,
        uploaded=transfer.uploaded,
        skipped=transfer.skipped,
        alias=alias,
        alias_key=written_alias_key,
        published_at=published_at,
        duration_s=round(time.perf_counter() - t0, 3),
    )
    logger.info(
        "published %s at %s (%d uploaded, %d already there)%s",
        result.ref,
        result.uri,
        result.uploaded,
        result.skipped,
        f"; {alias} -> {result.version}" if alias else "",
    )
    return result


def _check_inputs(artifact_dir: Path | str, name: str, alias: str | None) -> Path:
    validate_name(name)
    if alias is not None:
        validate_alias(alias)
    folder = Path(artifact_dir)
    if not folder.is_dir():
        raise RegistryInputError(
            f"artifact={str(folder)!r} is not a folder: pass an artifact built with "
            "`lcm-build build` (a folder with manifest.json)"
        )
    return folder


def local_artifact(folder: Path) -> LocalArtifact:
    """Verify the folder against its manifest and its gate; refuse it with RegistryInputError."""
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
        if not is_safe_rel(rel):
            raise RegistryInputError(
                f"refusing to publish {folder}: manifest lists {rel!r}, "
                "which is not a relative path inside the artifact; rebuild it"
            )
        path = folder / rel
        uploads.append(Upload(rel, path, entry.bytes, entry.sha256, _stat(path)))
    path = folder / MANIFEST_NAME
    uploads.append(Upload(MANIFEST_NAME, path, path.stat().st_size, manifest.sha256, _stat(path)))
    return LocalArtifact(folder=folder, manifest=manifest, uploads=tuple(uploads))


def _upload_all(
    registry: Registry,
    name: str,
    version: str,
    uploads: tuple[Upload, ...],
    large_file_bytes: int,
    progress: bool,
) -> Transfer:
    bar = _Progress(sum(u.size for u in uploads), f"publish {name}@{version}", progress)
    uploaded = skipped = 0
    try:
        for item in uploads:
            key = registry.object_key(name, version, item.rel)
            if _upload(registry, item, key, large_file_bytes, bar.update):
                uploaded += 1
            else:
                skipped += 1
    finally:
        bar.close()
    return Transfer(uploaded=uploaded, skipped=skipped)


def _upload(
    registry: Registry,
    item: Upload,
    key: str,
    large_file_bytes: int,
    progress: Callable[[int], None],
) -> bool:
    """Upload one object unless it is already there; True if it was uploaded."""
    store = registry.store
    head = store.head(key)
    if (
        head is not None
        and int(head.get("ContentLength", -1)) == item.size
        and (head.get("Metadata") or {}).get(META_SHA256) == item.sha256
    ):
        progress(item.size)
        return False
    if item.size < large_file_bytes:
        data = item.path.read_bytes()
        if len(data) != item.size or _sha256_bytes(data) != item.sha256:
            raise RegistryInputError(
                f"{item.path} changed since it was verified against the manifest: "
                "publish again once nothing writes to the artifact"
            )
        content_type = (
            "application/json" if item.rel.endswith(".json") else "application/octet-stream"
        )
        store.put(key, data, content_type, {META_SHA256: item.sha256, **item.metadata})
        progress(item.size)
        return True
    # A file that changed under us is the operator's to fix (exit 2): the store lets the
    # check's RegistryInputError through unchanged, without retrying.
    store.upload_file(
        item.path,
        key,
        size=item.size,
        sha256=item.sha256,
        metadata=item.metadata,
        multipart_bytes=large_file_bytes,
        before=item.check_unchanged,
        callback=progress,
    )
    return True


def _write_alias(registry: Registry, alias: str, doc: Alias) -> str:
    key = registry.alias_key(doc.name, alias)
    data = doc.to_bytes()
    registry.store.put(key, data, "application/json", {META_SHA256: _sha256_bytes(data)})
    return key


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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


# --- list --------------------------------------------------------------------------------


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


def list_versions(registry: Registry, name: str | None = None) -> list[dict[str, Any]]:
    """Every complete published version (manifest.json present), by name, oldest first.

    Each row (the JSON of ``lcm-build list --json``): name, version, manifest_sha256,
    published_at, precision, shape, latest, aliases, files, bytes, intact (the manifest's
    sha256 matches the version), uri, and the manifest's ``quality`` and ``speed`` sections
    as the manifest holds them (None when it has none).
    """
    if name is not None:
        validate_name(name)
        names = [name]
    else:
        names = registry.names()
    rows: list[dict[str, Any]] = []
    for model in names:
        listing = registry.listing(model)
        if name is not None and listing.empty:
            raise registry.unknown_name(model)
        model_rows = []
        for version in listing.versions:
            key = registry.object_key(model, version, MANIFEST_NAME)
            got = registry.store.get(key)
            if got is None:
                logger.info("%s@%s is incomplete (no manifest.json): skipped", model, version)
                continue
            raw, response = got
            sha = _sha256_bytes(raw)
            try:
                manifest: Manifest | None = Manifest.from_bytes(raw, registry.store.uri(key))
            except ManifestError as e:
                logger.warning("%s@%s: %s", model, version, e)
                manifest = None
            aliases = listing.aliases_of(version)
            model_rows.append(
                {
                    "name": model,
                    "version": version,
                    "manifest_sha256": sha,
                    "published_at": _version_time(response),
                    "precision": manifest.precision if manifest else None,
                    "shape": manifest.shape.as_dict() if manifest and manifest.shape else {},
                    "latest": DEFAULT_ALIAS in aliases,
                    "aliases": aliases,
                    "files": len(manifest.files) + 1 if manifest else 1,
                    "bytes": len(raw) + (manifest.files_bytes if manifest else 0),
                    "intact": version_of(sha) == version,
                    "uri": registry.uri(model, version),
                    "quality": manifest.quality.as_dict()
                    if manifest and manifest.quality
                    else None,
                    "speed": manifest.speed.as_dict() if manifest and manifest.speed else None,
                }
            )
        model_rows.sort(key=lambda r: (r["published_at"], r["version"]))
        rows += model_rows
    return rows
