"""Check a model artifact before serving it: manifest, file hashes, versions, shape."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from lcm_fleet.artifact.kinds import VaeDecoderKind, names
from lcm_fleet.artifact.manifest import Manifest, Shape, read_manifest, verify_files
from lcm_fleet.errors import ManifestError
from worker.errors import ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A verified artifact and the static shape this worker compiles it for."""

    path: Path
    manifest: Manifest
    width: int
    height: int
    #: The guidance compiled in and used when a job sets none.
    guidance_scale: float = 8.0
    #: True for a UNet without a guidance embedding (SD1.5 + LCM-LoRA): classifier-free
    #: guidance doubles its batch when guidance_scale > 1, so the compiled regime counts.
    cfg: bool = False
    #: How the VAE decoder was made (``lcm-build --vae-decoder``).
    vae_decoder: VaeDecoderKind = VaeDecoderKind.SD
    #: The key (base64, LCM_MODEL_KEY) of an encrypted artifact, checked against its
    #: manifest; the pipeline decrypts the IR files in memory with it.
    key: SecretStr | None = None

    @property
    def key_bytes(self) -> bytes | None:
        from worker.model.crypto import parse_key

        return parse_key(self.key.get_secret_value()) if self.key is not None else None


def _unet_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}/unet/config.json is missing or unreadable: {e}") from e
    return config


def _major_minor(version: str | None) -> tuple[int, ...]:
    if not version:
        return ()
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_versions(manifest: Manifest) -> None:
    """Refuse an artifact built with a newer OpenVINO than this worker runs."""
    built = manifest.versions.get("openvino")
    try:
        running = metadata.version("openvino")
    except metadata.PackageNotFoundError as e:
        raise ModelLoadError("openvino is not installed: install lcm-fleet[worker]") from e
    if built and _major_minor(built) > _major_minor(running):
        raise ModelLoadError(
            f"the artifact was built with openvino {built}, this worker runs {running}: "
            "upgrade the worker's openvino (lcm-fleet[worker]) or rebuild the artifact"
        )
    if built and _major_minor(built) != _major_minor(running):
        logger.warning("artifact built with openvino %s, worker runs %s", built, running)


def check_quality(manifest: Manifest, path: Path) -> None:
    """Refuse a candidate that failed model_build's quality gate without an operator override."""
    refusal = manifest.gate_refusal("serve", path)
    if refusal is not None:
        raise ModelLoadError(refusal)


def check_vae_decoder(manifest: Manifest, path: Path) -> VaeDecoderKind:
    """The artifact's VAE decoder kind; refuse one this worker does not know.

    Every kind loads through genai's Text2ImagePipeline unchanged (model_build makes a TAESD
    decoder with the SD decoder's I/O); artifacts without the record have the SD decoder.
    """
    kind = manifest.vae_decoder.known_kind if manifest.vae_decoder else VaeDecoderKind.SD
    if kind is None:
        raise ModelLoadError(
            f"refusing to serve {path}: manifest.json has vae_decoder kind "
            f"{manifest.vae_decoder_kind!r}, this worker serves "
            f"{', '.join(names(VaeDecoderKind))}; upgrade the worker (lcm-fleet[worker]) or "
            "rebuild the artifact with this lcm-fleet"
        )
    return kind


def open_artifact(
    path: Path,
    width: int | None = None,
    height: int | None = None,
    key: SecretStr | None = None,
) -> ServedModel:
    """Read the manifest at ``path`` and check everything but the files' hashes.

    The format and OpenVINO versions, the quality gate, the VAE decoder kind, the shape,
    and for an encrypted artifact that ``key`` is its key; raise ModelLoadError on any
    mismatch. :func:`verify_files_of` checks the hashes (a
    worker does that while its render process compiles, and serves only after both).
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(
            f"model_dir={str(path)!r} is not a folder; set LCM_MODEL_DIR to an artifact built "
            "with `lcm-build build`"
        )
    try:
        manifest = read_manifest(path)
    except ManifestError as e:
        raise ModelLoadError(f"refusing to serve {path}: {e}") from e
    check_versions(manifest)
    check_quality(manifest, path)
    vae_decoder = check_vae_decoder(manifest, path)
    if manifest.encryption is not None or key is not None:
        from worker.model.crypto import check_key, parse_key

        check_key(manifest, parse_key(key.get_secret_value()) if key else None, path)
    shape = manifest.shape or Shape()
    w = width or shape.width
    h = height or shape.height
    if not w or not h:
        raise ModelLoadError(
            f"{path}/manifest.json has no shape; "
            "set LCM_WIDTH and LCM_HEIGHT or rebuild the artifact"
        )
    if (w, h) != (shape.width, shape.height):
        logger.warning(
            "serving %dx%d; the artifact was calibrated at %sx%s", w, h, shape.width, shape.height
        )
    if manifest.tome is not None:
        refusal = manifest.tome.size_refusal([(int(w), int(h))], path)
        if refusal is not None:
            raise ModelLoadError(refusal)
    cfg = not _unet_config(path).get("time_cond_proj_dim")
    guidance = float(shape.guidance_scale or (1.0 if cfg else 8.0))
    return ServedModel(
        path=path,
        manifest=manifest,
        width=int(w),
        height=int(h),
        guidance_scale=guidance,
        cfg=cfg,
        vae_decoder=vae_decoder,
        key=key if manifest.encryption is not None else None,
    )


def verify_files_of(model: ServedModel) -> None:
    """Check every file's size and sha256 against the manifest; raise ModelLoadError."""
    t0 = time.perf_counter()
    try:
        verify_files(model.path, model.manifest)
    except ManifestError as e:
        raise ModelLoadError(f"refusing to serve {model.path}: {e}") from e
    logger.info(
        "artifact %s verified: %d files, manifest %s, VAE decoder %s (hashed in %.1fs)",
        model.path,
        len(model.manifest.files),
        model.manifest.sha256[:16],
        model.vae_decoder,
        time.perf_counter() - t0,
    )


def verify_artifact(
    path: Path,
    width: int | None = None,
    height: int | None = None,
    key: SecretStr | None = None,
) -> ServedModel:
    """Read and verify the manifest at ``path``, hashes included; raise ModelLoadError."""
    model = open_artifact(path, width, height, key)
    verify_files_of(model)
    return model
