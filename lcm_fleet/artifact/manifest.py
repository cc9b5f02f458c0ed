"""The artifact manifest: what a model folder is, how it was built, and the hash of every file.

model_build writes it; the worker verifies it before it serves. This module is shared
across packages, so it imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lcm_fleet.errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT = "lcm-fleet.artifact"
FORMAT_VERSION = 1
#: Packages whose versions a manifest records.
TOOL_PACKAGES = (
    "lcm-fleet",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "nncf",
    "optimum-intel",
    "optimum",
    "diffusers",
    "transformers",
    "torch",
)
_CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool_versions(packages: tuple[str, ...] = TOOL_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def artifact_files(folder: Path) -> list[str]:
    """Every file of the artifact, relative and sorted, except the manifest itself."""
    folder = Path(folder)
    files = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                files.append(rel)
    return sorted(files)


def hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    folder = Path(folder)
    return {
        rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
        for rel in artifact_files(folder)
    }


def write_manifest(folder: Path, info: dict[str, Any]) -> Path:
    """Hash every file of ``folder`` and write ``manifest.json`` with ``info`` beside them."""
    folder = Path(folder)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info,
        "versions": tool_versions(),
        "files": hash_files(folder),
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest and the sha256 of its own bytes (the artifact's identity)."""

    data: dict[str, Any]
    sha256: str

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["files"])

    @property
    def shape(self) -> dict[str, int]:
        return dict(self.data.get("shape") or {})

    @property
    def versions(self) -> dict[str, str | None]:
        return dict(self.data.get("versions") or {})


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path} does not exist: {folder} is not an lcm-fleet artifact; build one with "
            "`lcm-build build SOURCE OUT` (or `lcm-build quantize`)"
        )
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not an lcm-fleet manifest (format != {FORMAT!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format_version={version!r}; this lcm-fleet reads version "
            f"{FORMAT_VERSION}: rebuild the artifact with this lcm-fleet"
        )
    if not isinstance(data.get("files"), dict) or not data["files"]:
        raise ManifestError(f"{path} lists no files")
    return Manifest(data=data, sha256=sha256_bytes(raw))


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check that the folder holds exactly the manifest's files with their sizes and sha256.

    Raises ManifestError listing every mismatch.
    """
    folder = Path(folder)
    problems: list[str] = []
    listed = manifest.files
    present = set(artifact_files(folder))
    for rel in sorted(present - set(listed)):
        problems.append(f"{rel}: not listed in the manifest")
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        if rel not in present:
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problems.append(f"{rel}: {size} bytes, manifest says {entry.get('bytes')}")
            continue
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            problems.append(
                f"{rel}: sha256 {actual[:16]}..., manifest says {str(entry.get('sha256'))[:16]}..."
            )
    if problems:
        raise ManifestError(
            f"artifact {folder} does not match its manifest ({len(problems)} problem(s)): "
            + "; ".join(problems)
            + ". The files were changed or damaged after the build: rebuild or re-download it."
        )
