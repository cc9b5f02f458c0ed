"""The artifact manifest: what a model folder is, how it was built, and the hash of every file.

model_build writes it; the worker verifies it before it serves; the registry names a
published version by the sha256 of its bytes. Each section is a frozen pydantic model,
typed where a reader relies on a field and open (``extra="allow"``) for the rest, so a
``format_version`` 1 file parses and dumps back to the same bytes: a section or field
left out stays out, an explicit ``null`` stays ``null``, an int stays an int.

Only the standard library and pydantic at import: every role reads manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from lcm_fleet.artifact.kinds import VaeDecoderKind
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

#: A figure: int and float kept apart (a float type would turn 8 into 8.0 and change the bytes).
Number = Union[int, float]  # noqa: UP007 - pydantic evaluates it at run time on Python 3.10 too


# --- the sections ------------------------------------------------------------------------


class Section(BaseModel):
    """A manifest section: the typed fields readers use, any other key kept as it is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    def as_dict(self) -> dict[str, Any]:
        """The section as the file holds it: only the keys it has, nulls included."""
        return self.model_dump(exclude_unset=True)


class FileEntry(BaseModel):
    """One file of the artifact (``files``: relative POSIX path -> entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    bytes: int


class Shape(Section):
    """The static shape the artifact was calibrated and gated at: a worker's default shape."""

    width: int | None = None
    height: int | None = None
    batch: int | None = None
    #: The guidance a worker compiles in and uses when a job sets none.
    guidance_scale: Number | None = None


class Quality(Section):
    """The quality gate's figures against the fp32 reference (f32 inference) and its decision.

    ``passed`` is None (or the section absent) when no gate ran, as for an fp32 export.
    """

    passed: bool | None = None
    #: The operator's reason for keeping a candidate below the gate (``--accept-below-gate``).
    override: str | None = None
    failures: list[str] = Field(default_factory=list)
    images: int | None = None
    psnr_db_mean: Number | None = None
    psnr_db_min: Number | None = None
    ssim_mean: Number | None = None
    ssim_min: Number | None = None
    mean_abs_diff_mean: Number | None = None
    mean_abs_diff_max: Number | None = None
    #: Prompt adherence (reference-domain models only).
    adherence_fp32_pct: Number | None = None
    adherence_pct: Number | None = None
    adherence_drop_points: Number | None = None

    @property
    def serveable(self) -> bool:
        """False only for a candidate that failed its gate without an operator's override."""
        return self.passed is not False or bool(self.override)


class VaeDecoderRecord(Section):
    """How the VAE decoder was made (model_build.vae_decoder); the rest says with what."""

    #: A :class:`VaeDecoderKind` value; kept as text so that a newer kind still parses and
    #: the worker can refuse it by name.
    kind: str

    @property
    def known_kind(self) -> VaeDecoderKind | None:
        """The kind as this lcm-fleet knows it; None for a kind from a newer lcm-fleet."""
        try:
            return VaeDecoderKind(self.kind)
        except ValueError:
            return None


class Calibration(Section):
    """What the INT8 calibration rendered (prompts, shape, steps, seed)."""

    prompts: str | None = None
    prompts_sha256: str | None = None
    prompts_used: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: Number | None = None
    seed: int | None = None


class Quantization(Section):
    """How the weights were reduced: the NNCF recipe (its keys as NNCF took them), the parts
    it touched, the calibration; None for an fp32 artifact."""

    method: str | None = None
    part: str | None = None
    parts: list[str] | None = None
    unchanged_parts: list[str] | None = None
    samples: int | None = None
    calibration: Calibration | None = None


class Source(Section):
    """Where the weights came from: a hub id, a local folder, a fused LoRA, the fp32 parent."""

    #: ``hub``, ``local``, ``ir`` or ``lcm-lora-fused``.
    kind: str | None = None
    #: The sha256 of the fp32 artifact's manifest a candidate was made from.
    fp32_manifest_sha256: str | None = None


class ExportRecord(Section):
    """How the fp32 IR was exported (optimum-intel)."""

    tool: str | None = None
    task: str | None = None
    weight_format: str | None = None


class SpeedFigures(Section):
    """Median seconds per image at the device's default precision."""

    unet_s: Number | None = None
    vae_s: Number | None = None
    pipeline_s: Number | None = None


class Speed(Section):
    """The candidate's speed against the fp32 reference's."""

    precision_hint: str | None = None
    reference: SpeedFigures | None = None
    candidate: SpeedFigures | None = None
    unet_speedup: Number | None = None
    vae_speedup: Number | None = None
    pipeline_speedup: Number | None = None


class BuildRecord(Section):
    """The build's own figures: seconds per stage and the peak memory of the build process."""

    durations_s: dict[str, Number] = Field(default_factory=dict)
    peak_rss_gib: Number | None = None


class ModelInfo(Section):
    """What the UNet's config says about guidance."""

    #: ``embedding``: any guidance per job; ``cfg``: the compiled guidance regime counts.
    guidance: str | None = None
    unet_in_channels: int | None = None
    unet_time_cond_proj_dim: int | None = None
    unet_cross_attention_dim: int | None = None


class TomeRecord(Section):
    """Token merging in the UNet IR (``lcm-build build|export --tome RATIO``,
    model_build/tome.py). The partition is a constant of the IR: it serves
    ``width`` x ``height`` only."""

    #: Share of the highest-resolution tokens merged before each patched self-attention.
    ratio: Number
    width: int
    height: int
    tokens: int | None = None
    merged_tokens: int | None = None
    self_attentions: int | None = None
    method: str | None = None

    def size_refusal(self, sizes: list[tuple[int, int]], where: object) -> str | None:
        """Why ``sizes`` cannot be served from this IR, or None when each is its size."""
        other = [f"{w}x{h}" for w, h in sizes if (w, h) != (self.width, self.height)]
        if not other:
            return None
        return (
            f"refusing to serve {', '.join(other)} from {where}: its UNet merges tokens "
            f"(--tome {self.ratio}) with a partition fixed for {self.width}x{self.height}; "
            "serve that size only, or build one artifact per size class"
        )


class Encryption(Section):
    """The artifact's IR files are encrypted at rest (worker/model/crypto.py).

    ``files`` in the manifest hash the files as stored (``<name>.enc``, the ciphertext);
    ``plaintext`` maps each original file's relative path to the sha256 of its decrypted
    bytes, checked after decryption. ``key_id`` fingerprints the key (not the key).
    """

    algorithm: str
    key_id: str
    plaintext: dict[str, str] = Field(default_factory=dict)
    #: The sha256 of the plaintext artifact's manifest it was made from.
    plaintext_manifest_sha256: str | None = None


class ArtifactInfo(Section):
    """What a build says about an artifact: everything in a manifest but the format, the
    tool versions and the files, which :func:`write_manifest` adds."""

    precision: str | None = None
    shape: Shape | None = None
    source: Source | None = None
    export: ExportRecord | None = None
    quantization: Quantization | None = None
    fake_quantize_count: int | None = None
    vae_decoder: VaeDecoderRecord | None = None
    quality: Quality | None = None
    speed: Speed | None = None
    build: BuildRecord | None = None
    model: ModelInfo | None = None
    encryption: Encryption | None = None
    tome: TomeRecord | None = None


class Manifest(ArtifactInfo):
    """A parsed ``manifest.json``, with the sha256 of its bytes (the artifact's identity)."""

    format: Literal["lcm-fleet.artifact"]
    format_version: Literal[1]
    versions: dict[str, str | None] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(min_length=1)

    _sha256: str = PrivateAttr(default="")

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def files_bytes(self) -> int:
        """The size of every file but the manifest."""
        return sum(entry.bytes for entry in self.files.values())

    @property
    def vae_decoder_kind(self) -> str:
        """The VAE decoder's kind as recorded; ``sd`` for artifacts without the record."""
        return self.vae_decoder.kind if self.vae_decoder is not None else VaeDecoderKind.SD.value

    def info(self) -> ArtifactInfo:
        """What the build said: every section but the format, versions and files."""
        exclude = {"format", "format_version", "versions", "files"}
        return ArtifactInfo.model_validate(self.model_dump(exclude_unset=True, exclude=exclude))

    def derived_source(self, parent_key: str = "fp32_manifest_sha256") -> dict[str, Any]:
        """The ``source`` record of an artifact made from this one: this one's source, and
        the sha256 of this manifest under ``parent_key``."""
        source = self.source.as_dict() if self.source is not None else {}
        return {**source, parent_key: self.sha256}

    def gate_refusal(self, action: str, where: object) -> str | None:
        """Why the artifact at ``where`` may not be served or published (``action``: serve,
        publish), or None when its quality gate passed, did not run, or was overridden."""
        if self.quality is None or self.quality.serveable:
            return None
        return (
            f"refusing to {action} {where}: it failed the quality gate at build time "
            f"({'; '.join(self.quality.failures)}); rebuild it, or build it with "
            "--accept-below-gate REASON to accept it on record"
        )

    def to_json(self) -> str:
        """The file's text: sorted keys, two-space indent, a final newline."""
        return _dumps(self.as_dict())

    @classmethod
    def from_bytes(cls, raw: bytes, where: object = MANIFEST_NAME) -> Manifest:
        """Parse and check a manifest's bytes; ManifestError says what is wrong with it."""
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ManifestError(f"{where} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{where} is not an lcm-fleet manifest (format != {FORMAT!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{where} has format_version={version!r}; this lcm-fleet reads version "
                f"{FORMAT_VERSION}: rebuild the artifact with this lcm-fleet"
            )
        if not isinstance(data.get("files"), dict) or not data["files"]:
            raise ManifestError(f"{where} lists no files")
        manifest = _validate(data, where)
        manifest._sha256 = sha256_bytes(raw)
        return manifest


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _validate(data: Mapping[str, Any], where: object) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ManifestError(f"{where} is not a valid lcm-fleet manifest: {problems}") from e


# --- files and hashes --------------------------------------------------------------------


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


# --- write and read ----------------------------------------------------------------------


def write_manifest(folder: Path, info: ArtifactInfo | Mapping[str, Any]) -> Path:
    """Hash every file of ``folder`` and write ``manifest.json`` with ``info`` beside them.

    ``info`` is an :class:`ArtifactInfo` (the sections it was given are written, nulls
    included) or the same as a dict; a dict is written exactly as before the typed manifest
    (the typed one must say the same, or ManifestError).
    """
    folder = Path(folder)
    given = info.as_dict() if isinstance(info, ArtifactInfo) else dict(info)
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **given,
        "versions": tool_versions(),
        "files": hash_files(folder),
    }
    path = folder / MANIFEST_NAME
    manifest = _validate(body, f"the manifest for {folder}")
    text = manifest.to_json()
    if not isinstance(info, ArtifactInfo) and text != _dumps(body):
        raise ManifestError(
            f"the manifest for {folder} would not be written as given: a typed field "
            "changed a value (e.g. an int where a float belongs); pass the values as the "
            "manifest's sections type them"
        )
    path.write_text(text, encoding="utf-8")
    return path


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path} does not exist: {folder} is not an lcm-fleet artifact; build one with "
            "`lcm-build build SOURCE OUT` (or `lcm-build quantize`)"
        )
    return Manifest.from_bytes(path.read_bytes(), path)


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
        if size != entry.bytes:
            problems.append(f"{rel}: {size} bytes, manifest says {entry.bytes}")
            continue
        actual = sha256_file(path)
        if actual != entry.sha256:
            problems.append(f"{rel}: sha256 {actual[:16]}..., manifest says {entry.sha256[:16]}...")
    if problems:
        raise ManifestError(
            f"artifact {folder} does not match its manifest ({len(problems)} problem(s)): "
            + "; ".join(problems)
            + ". The files were changed or damaged after the build: rebuild or re-download it."
        )
