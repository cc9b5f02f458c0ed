"""Where a build's inputs come from, as the manifest records them (the model, a TAESD, a LoRA).

Standard library and the kernel only: model_build.vae_decoder, which stays light, uses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import artifact_files, sha256_file


def describe_source(source: str, revision: str) -> dict[str, Any]:
    """A local folder by its path and a digest of its files' names and hashes; anything
    else as a hub id at ``revision``."""
    path = Path(source)
    if path.exists():
        digest = hashlib.sha256()
        for rel in artifact_files(path):
            digest.update(rel.encode())
            digest.update(sha256_file(path / rel).encode())
        return {"kind": "local", "path": str(path.resolve()), "content_sha256": digest.hexdigest()}
    return {"kind": "hub", "id": source, "revision": revision}
