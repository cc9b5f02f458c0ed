"""Skip re-hashing an artifact whose files have not changed since they were last hashed.

Hashing every file of a multi-GB artifact at every start costs seconds a worker does not need
to spend when nothing has touched the files. After a full check passes, the worker writes a
*verified marker* under ``LCM_MODEL_CACHE_DIR/.verified/``: the manifest's sha256 and, for
every file, its size, mtime, ctime, inode and device. At the next start, with
``LCM_ARTIFACT_VERIFY=marker`` (the default), a marker that matches the manifest and every
file's ``stat`` stands in for the hashes; anything else (no marker, another manifest, a file
added, removed, resized, replaced or touched) hashes every file again.

How a changed byte is still caught before serving: any write to a file, through any path,
sets its ctime to the current time, and user space cannot set ctime back (``utime`` sets
atime and mtime, and itself updates ctime); a replaced file has another inode. So a file
whose bytes changed since it was hashed no longer matches its marker entry, and is hashed
again before the worker serves. What escapes it is a change that bypasses the file system
(raw writes to the block device) or a root user moving the system clock back; where that
matters, set ``LCM_ARTIFACT_VERIFY=full`` to hash every start. No marker is written while a
file changed within the last :data:`SETTLE_S` seconds, so a write in the same coarse
timestamp tick as the marker's stat cannot be missed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from lcm_fleet.artifact.manifest import Manifest, artifact_files
from lcm_fleet.enums import TextEnum

logger = logging.getLogger(__name__)

MARKER_DIR = ".verified"
MARKER_FORMAT = 1
#: A file changed less than this long ago is hashed again at the next start.
SETTLE_S = 2.0


class VerifyMode(TextEnum):
    """``LCM_ARTIFACT_VERIFY``: how a worker checks its artifact's files at start."""

    #: Hash every file unless a verified marker matches every file's stat (the default).
    MARKER = "marker"
    #: Hash every file at every start.
    FULL = "full"


class FileStat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


class Marker(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = MARKER_FORMAT
    folder: str
    manifest_sha256: str
    hashed_at: float
    files: dict[str, FileStat]


def marker_path(cache_root: Path, folder: Path, manifest: Manifest) -> Path:
    """Where the marker of this folder and manifest lives (one per pair)."""
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path(cache_root) / MARKER_DIR / f"{where}-{manifest.sha256[:16]}.json"


def _stat(path: Path) -> FileStat:
    st = path.stat()
    return FileStat(
        bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
    )


def stat_files(folder: Path, manifest: Manifest) -> dict[str, FileStat] | None:
    """Every listed file's stat, manifest.json included; None when the file set differs."""
    present = artifact_files(folder)
    if set(present) != set(manifest.files):
        return None
    names = [*present, "manifest.json"]
    try:
        return {rel: _stat(folder / rel) for rel in names}
    except OSError:
        return None


def matches(cache_root: Path, folder: Path, manifest: Manifest) -> bool:
    """True when a marker for this folder and manifest matches every file's stat now."""
    path = marker_path(cache_root, folder, manifest)
    try:
        marker = Marker.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValidationError) as e:
        logger.warning("ignoring the unreadable verified marker %s: %s", path, e)
        return False
    if marker.format_version != MARKER_FORMAT or marker.manifest_sha256 != manifest.sha256:
        return False
    return stat_files(folder, manifest) == marker.files


def write(
    cache_root: Path, folder: Path, manifest: Manifest, before: dict[str, FileStat] | None
) -> Path | None:
    """Record that the files hashed right now match ``manifest``; ``before`` is their stat
    taken before hashing. Nothing is written if a file changed meanwhile or too recently."""
    after = stat_files(folder, manifest)
    if before is None or after != before:
        logger.warning("%s changed while it was hashed: no verified marker written", folder)
        return None
    newest_s = max(s.ctime_ns for s in after.values()) / 1e9
    if time.time() - newest_s < SETTLE_S:
        logger.info("%s changed in the last %.0fs: no verified marker yet", folder, SETTLE_S)
        return None
    path = marker_path(cache_root, folder, manifest)
    marker = Marker(
        folder=str(folder.resolve()),
        manifest_sha256=manifest.sha256,
        hashed_at=time.time(),
        files=after,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(marker.model_dump(mode="json"), indent=1))
        tmp.replace(path)
    except OSError as e:
        logger.warning("could not write the verified marker %s: %s", path, e)
        return None
    return path
