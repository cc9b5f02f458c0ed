"""Compiled-model blobs: each compiled model of a pipeline exported to disk, imported next start.

Why: OpenVINO's compile cache (``CACHE_DIR``) still reads the IR and compiles before it finds
the cached model; importing an exported compiled model skips both (openvino.genai's
``export_model`` / ``blob_path`` per component; figures in docs/performance.md, "Cold start").
genai's whole-pipeline ``Text2ImagePipeline.export_model`` serves only SDXL in 2026.4, so the
worker compiles the text encoder, UNet and VAE decoder itself (worker/render/pipeline.py) and
exports each.

Layout, one folder per artifact, size class, devices and compile properties (the inputs that
OpenVINO's compile cache keys on, and the OpenVINO and genai versions):

    LCM_CACHE_DIR/blobs/<W>x<H>-<key digest>/
        text_encoder/openvino_model.blob
        unet/openvino_model.blob
        vae/vae_decoder/openvino_model.blob
        blobs.json      the key the folder was made for; each blob's size, sha256 and stat

A folder is written under a temporary name and renamed into place once complete, so a
reader never sees half of one. It is *valid* when its record names the same key and every
blob still has the recorded stat (size, mtime, ctime, inode, device: any write through the
file system changes ctime; see worker/model/verified.py), or with ``LCM_ARTIFACT_VERIFY=full``
the recorded sha256. Anything else is stale or corrupt: the worker warns, compiles, and
exports the folder again. Never for an encrypted artifact: a blob holds the weights in the
clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lcm_fleet.enums import TextEnum
from worker.model.verified import VerifyMode

logger = logging.getLogger(__name__)

#: The folder under LCM_CACHE_DIR that holds the blob folders.
BLOB_DIR = "blobs"
RECORD = "blobs.json"
BLOB_FORMAT = 1
#: Hex digits of the key's sha256 in a folder's name.
DIGEST_CHARS = 20


class Component(TextEnum):
    """The compiled models of an LCM / SD1.5 pipeline, each exported on its own."""

    TEXT_ENCODER = "text_encoder"
    UNET = "unet"
    VAE = "vae"


#: Where genai's ``export_model(folder / component)`` writes each component's blob.
BLOB_FILES: dict[Component, str] = {
    Component.TEXT_ENCODER: "text_encoder/openvino_model.blob",
    Component.UNET: "unet/openvino_model.blob",
    Component.VAE: "vae/vae_decoder/openvino_model.blob",
}


class BlobState(TextEnum):
    VALID = "valid"
    #: No folder yet for this key: the first start with these inputs.
    MISSING = "missing"
    #: A folder whose record names another key (or format): made for other inputs.
    STALE = "stale"
    #: A blob or the record changed, went missing or cannot be read.
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class BlobKey:
    """Everything a compiled model depends on; a blob serves only the exact same key."""

    #: The artifact's manifest sha256 (it lists every file's sha256).
    model_sha256: str
    #: genai's pipeline kind (model_index.json's class).
    pipeline: str
    width: int
    height: int
    #: Compiled in: for a CFG UNet it sets the batch.
    guidance_scale: float
    #: (text encoder, UNet, VAE decoder) devices.
    devices: tuple[str, str, str]
    #: Each distinct device's name and capabilities as OpenVINO reports them (a blob made on
    #: an AMX CPU is not one for an AVX2 CPU).
    device_ids: tuple[str, ...]
    #: The compile properties, CACHE_DIR left out: (name, value) sorted.
    config: tuple[tuple[str, str], ...]
    openvino: str
    genai: str

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as in the record

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def folder(self, root: Path) -> Path:
        """This key's blob folder under ``root`` (LCM_CACHE_DIR/blobs)."""
        return Path(root) / f"{self.width}x{self.height}-{self.digest()[:DIGEST_CHARS]}"


def key_config(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The compile properties that shape a compiled model: all but where the cache lives."""
    return tuple(sorted((k, str(v)) for k, v in config.items() if k != "CACHE_DIR"))


def import_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The properties an import takes: the compile properties without CACHE_DIR (an imported
    model is not compiled, so there is nothing to cache)."""
    return {k: v for k, v in config.items() if k != "CACHE_DIR"}


def blob_root(cache_dir: str, enabled: bool) -> str:
    """LCM_CACHE_DIR/blobs when blobs are on and there is a cache dir; "" (off) otherwise."""
    if not enabled or not cache_dir:
        return ""
    return str(Path(cache_dir) / BLOB_DIR)


class BlobFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int
    sha256: str
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


class BlobRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = BLOB_FORMAT
    key: dict[str, Any]
    exported_at: float
    #: Each blob (its path in the folder): size, sha256 and stat.
    files: dict[str, BlobFile]


@dataclass(frozen=True)
class BlobCheck:
    state: BlobState
    #: Why it is not valid (for the warning), or what was checked.
    reason: str

    @property
    def valid(self) -> bool:
        return self.state is BlobState.VALID


def _stat_of(path: Path) -> tuple[int, int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_blobs(folder: Path, key: BlobKey, mode: VerifyMode = VerifyMode.MARKER) -> BlobCheck:
    """Is ``folder`` a complete export for ``key`` whose blobs nothing has touched since?

    ``mode``: ``marker`` compares each blob's stat with the record; ``full`` hashes each blob
    as well (LCM_ARTIFACT_VERIFY: the same trust as for the artifact's own files).
    """
    folder = Path(folder)
    record_path = folder / RECORD
    if not folder.exists():
        return BlobCheck(BlobState.MISSING, f"no compiled-model blobs in {folder} yet")
    try:
        record = BlobRecord.model_validate_json(record_path.read_bytes())
    except FileNotFoundError:
        return BlobCheck(BlobState.CORRUPT, f"{record_path} is missing")
    except (OSError, ValidationError) as e:
        return BlobCheck(BlobState.CORRUPT, f"{record_path} is unreadable: {e}")
    if record.format_version != BLOB_FORMAT:
        return BlobCheck(
            BlobState.STALE,
            f"{record_path} has format {record.format_version}, this worker writes {BLOB_FORMAT}",
        )
    expected = key.as_dict()
    if record.key != expected:
        changed = sorted(k for k in expected if record.key.get(k) != expected[k])
        return BlobCheck(
            BlobState.STALE, f"{folder} was exported for another {', '.join(changed) or 'key'}"
        )
    if set(record.files) != set(BLOB_FILES.values()):
        return BlobCheck(BlobState.CORRUPT, f"{record_path} lists {sorted(record.files)}")
    for rel, entry in record.files.items():
        path = folder / rel
        try:
            now = _stat_of(path)
        except OSError as e:
            return BlobCheck(BlobState.CORRUPT, f"{path} cannot be read: {e}")
        recorded = (entry.bytes, entry.mtime_ns, entry.ctime_ns, entry.inode, entry.device)
        if now[0] != entry.bytes:
            return BlobCheck(
                BlobState.CORRUPT, f"{path} has {now[0]} bytes, {entry.bytes} were exported"
            )
        if now != recorded:
            return BlobCheck(BlobState.CORRUPT, f"{path} was changed after it was exported")
        if mode is VerifyMode.FULL:
            try:
                digest = _sha256(path)
            except OSError as e:
                return BlobCheck(BlobState.CORRUPT, f"{path} cannot be read: {e}")
            if digest != entry.sha256:
                return BlobCheck(BlobState.CORRUPT, f"{path} does not match its sha256")
    how = "hashed" if mode is VerifyMode.FULL else "stat matches the export"
    return BlobCheck(BlobState.VALID, f"{len(record.files)} blobs in {folder} ({how})")


def _describe(path: Path) -> BlobFile:
    """Size, sha256 and stat of a blob just written; the stat is taken before and after the
    hash and must agree (nothing wrote to it meanwhile)."""
    before = _stat_of(path)
    digest = _sha256(path)
    after = _stat_of(path)
    if before != after:
        raise OSError(f"{path} changed while it was hashed")
    size, mtime, ctime, inode, device = after
    return BlobFile(
        bytes=size, sha256=digest, mtime_ns=mtime, ctime_ns=ctime, inode=inode, device=device
    )


def export_blobs(
    folder: Path, key: BlobKey, write: Callable[[Path], None], mode: VerifyMode = VerifyMode.MARKER
) -> bool:
    """Export into ``folder`` atomically: ``write(tmp)`` writes the blobs (BLOB_FILES) into a
    temporary sibling, which gets its record and is renamed to ``folder``.

    An invalid ``folder`` is replaced; a valid one (another render process got there first)
    is kept and ours dropped. Returns True when ``folder`` holds a valid export afterwards.
    A failure is logged, never raised: the pipeline is compiled and serves either way.
    """
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        files = {rel: _describe(tmp / rel) for rel in BLOB_FILES.values()}
        record = BlobRecord(key=key.as_dict(), exported_at=time.time(), files=files)
        (tmp / RECORD).write_text(json.dumps(record.model_dump(mode="json"), indent=1))
        if check_blobs(folder, key, mode).valid:
            logger.info("compiled-model blobs in %s were exported meanwhile; keeping them", folder)
            return True
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except Exception as e:
        logger.warning("could not export the compiled models to %s: %s", folder, e)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def discard_blobs(folder: Path) -> None:
    """Remove a blob folder that looked valid but would not import, so it is exported anew."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("could not remove the compiled-model blobs in %s: %s", folder, e)


def folder_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1024**3
