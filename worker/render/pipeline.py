"""The compiled openvino.genai pipeline, one per size class, each with a static shape.

The one wrapper around genai's Text2ImagePipeline: the worker renders through it, and so
do model_build's quality gate and reference evaluation and bench/, so a change to how a
worker compiles or renders reaches every figure that judges it.

Nothing here runs at import time. The worker's render process (worker/render/process.py)
compiles its pipelines once when it starts, with the compile cache on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lcm_fleet.artifact.kinds import InferencePrecision
from lcm_fleet.enums import TextEnum
from worker.errors import ModelLoadError, RenderCancelled
from worker.model.artifact import ServedModel
from worker.model.verified import VerifyMode

if TYPE_CHECKING:
    from worker.model.crypto import Decryptor
    from worker.render.blobs import BlobKey

logger = logging.getLogger(__name__)

#: The genai pipeline constructor of each diffusers pipeline class (model_index.json).
PIPELINE_KINDS = {
    "LatentConsistencyModelPipeline": "latent_consistency_model",
    "StableDiffusionPipeline": "stable_diffusion",
}


class LoadKind(TextEnum):
    """How a pipeline's compiled models came to be."""

    #: Compiled from the IR (with the compile cache when LCM_CACHE_DIR is set).
    COMPILED = "compiled"
    #: Imported from compiled-model blobs exported at an earlier start (worker/render/blobs.py).
    IMPORTED = "imported"


@dataclass(frozen=True)
class StageTimes:
    text_encoder_s: float
    unet_s: float
    vae_s: float
    total_s: float


class CompiledShape(Protocol):
    """What a job is checked against: the compiled size and guidance regime."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def guidance_scale(self) -> float: ...
    @property
    def cfg(self) -> bool: ...


#: ``on_step(step, steps)`` after each denoising step (1-based); True stops the render.
StepCallback = Callable[[int, int], bool]


class ImagePipeline(CompiledShape, Protocol):
    """What rendering needs from a pipeline (the genai one, or a fake in fast tests)."""

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance_scale: float,
        deadline: float | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        """Render one image: (H x W x 3 uint8 array, stage times).

        ``deadline`` (time.monotonic()): stop at the next denoising step once it has
        passed and raise :class:`worker.errors.RenderCancelled`; likewise (``requested``)
        when ``on_step`` returns True.
        """
        ...


def compile_devices(device: str, text_encoder_device: str | None) -> tuple[str, ...]:
    """genai's compile takes one device, or (text encoder, denoiser, VAE) devices."""
    if text_encoder_device and text_encoder_device != device:
        return (text_encoder_device, device, device)
    return (device,)


@dataclass(frozen=True)
class CompileOptions:
    """How a pipeline is compiled: its devices and OpenVINO properties (the worker's LCM_*)."""

    device: str = "CPU"
    cache_dir: str = ""
    #: INFERENCE_PRECISION_HINT; ``default`` lets the device choose (what a worker serves).
    precision: str = InferencePrecision.DEFAULT
    cpu_threads: int | None = None
    cpu_pinning: bool | None = None
    text_encoder_device: str | None = None
    #: Where compiled-model blobs are imported from and exported to (LCM_CACHE_DIR/blobs,
    #: worker/render/blobs.py); "" compiles at every start.
    blob_dir: str = ""
    #: How a blob is checked before its import (LCM_ARTIFACT_VERIFY).
    blob_verify: VerifyMode = VerifyMode.MARKER
    #: SNIPPETS_MODE=DISABLE on the CPU: OpenVINO's fused subgraph code generator off. Set
    #: when it cannot compile a model (see :data:`SNIPPETS_FAILURE`), not by users.
    snippets_off: bool = False

    def devices(self) -> tuple[str, ...]:
        return compile_devices(self.device, self.text_encoder_device)

    def component_devices(self) -> tuple[str, str, str]:
        """(text encoder, UNet, VAE decoder) devices."""
        devices = self.devices()
        if len(devices) == 1:
            return (devices[0], devices[0], devices[0])
        return (devices[0], devices[1], devices[2])

    def config(self) -> dict[str, Any]:
        """genai's compile properties: the cache, the precision hint, CPU threads and pinning."""
        config: dict[str, Any] = {}
        if self.cache_dir:
            config["CACHE_DIR"] = self.cache_dir
        if self.precision != InferencePrecision.DEFAULT:
            config["INFERENCE_PRECISION_HINT"] = str(self.precision)
        if self.device.startswith("CPU"):
            if self.cpu_threads:
                config["INFERENCE_NUM_THREADS"] = self.cpu_threads
            if self.cpu_pinning is not None:
                config["ENABLE_CPU_PINNING"] = self.cpu_pinning
            if self.snippets_off:
                config["SNIPPETS_MODE"] = "DISABLE"
        return config


def known_kind(path: Path) -> str | None:
    """genai's constructor name for ``path``, or None when its model_index.json names
    another pipeline (or is unreadable): such a folder loads through Text2ImagePipeline(path)."""
    try:
        return pipeline_kind(path, "it")
    except ModelLoadError:
        return None


def pipeline_kind(path: Path, what: str) -> str:
    """genai's constructor name for the model folder ``path`` (its model_index.json)."""
    import json

    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}/model_index.json is missing or unreadable: {e}") from e
    kind = PIPELINE_KINDS.get(str(index.get("_class_name")))
    if kind is None:
        raise ModelLoadError(
            f"refusing to serve {path}: model_index.json names {index.get('_class_name')!r}; "
            f"{what} loads only as {', '.join(PIPELINE_KINDS)}"
        )
    return kind


def device_ids(devices: tuple[str, ...]) -> tuple[str, ...]:
    """Each distinct device's name and optimization capabilities, as OpenVINO reports them."""
    import openvino as ov

    core = ov.Core()
    ids = []
    for device in dict.fromkeys(devices):
        name = core.get_property(device, "FULL_DEVICE_NAME")
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        ids.append(f"{device}: {name} [{' '.join(caps)}]")
    return tuple(ids)


def blob_key(
    path: Path,
    model_sha256: str,
    width: int,
    height: int,
    guidance_scale: float,
    options: CompileOptions,
) -> BlobKey:
    """The :class:`worker.render.blobs.BlobKey` of this artifact, size and compile options."""
    import openvino as ov
    import openvino_genai as ov_genai

    from worker.render.blobs import BlobKey, key_config

    return BlobKey(
        model_sha256=model_sha256,
        pipeline=pipeline_kind(path, "a pipeline with compiled-model blobs"),
        width=width,
        height=height,
        guidance_scale=guidance_scale,
        devices=options.component_devices(),
        device_ids=device_ids(options.devices()),
        config=key_config(options.config()),
        openvino=ov.get_version(),
        genai=ov_genai.__version__,
    )


def compile_components(
    path: Path, width: int, height: int, guidance_scale: float, options: CompileOptions
) -> tuple[Any, Any, Any]:
    """The text encoder, UNet and VAE decoder of the folder ``path``, reshaped and compiled
    one by one as genai's Text2ImagePipeline.reshape / compile do, so each can be exported."""
    import openvino_genai as ov_genai

    text_device, unet_device, vae_device = options.component_devices()
    config = options.config()
    text_encoder = ov_genai.CLIPTextModel(str(path / "text_encoder"))
    unet = ov_genai.UNet2DConditionModel(str(path / "unet"))
    vae = ov_genai.AutoencoderKL(str(path / "vae_decoder"))
    # A CFG UNet runs the prompt and the negative prompt as one batch of 2.
    multiplier = 2 if unet.do_classifier_free_guidance(guidance_scale) else 1
    text_encoder.reshape(multiplier)
    unet.reshape(multiplier, height, width, text_encoder.get_config().max_position_embeddings)
    vae.reshape(1, height, width)
    text_encoder.compile(text_device, **config)
    unet.compile(unet_device, **config)
    vae.compile(vae_device, **config)
    return text_encoder, unet, vae


def import_components(path: Path, folder: Path, options: CompileOptions) -> tuple[Any, Any, Any]:
    """The text encoder, UNet and VAE decoder imported from the blob folder ``folder``."""
    import openvino_genai as ov_genai

    from worker.render.blobs import import_config

    text_device, unet_device, vae_device = options.component_devices()
    config = import_config(options.config())
    text_encoder = ov_genai.CLIPTextModel(
        str(path / "text_encoder"), text_device, blob_path=str(folder / "text_encoder"), **config
    )
    unet = ov_genai.UNet2DConditionModel(
        str(path / "unet"), unet_device, blob_path=str(folder / "unet"), **config
    )
    vae = ov_genai.AutoencoderKL(
        str(path / "vae_decoder"), vae_device, blob_path=str(folder / "vae"), **config
    )
    return text_encoder, unet, vae


def export_components(components: tuple[Any, Any, Any], folder: Path) -> None:
    """Write each compiled component's blob under ``folder`` (blobs.BLOB_FILES)."""
    text_encoder, unet, vae = components
    text_encoder.export_model(str(folder / "text_encoder"))
    unet.export_model(str(folder / "unet"))
    vae.export_model(str(folder / "vae"))


def assemble(path: Path, components: tuple[Any, Any, Any]) -> Any:
    """genai's pipeline of ``path``'s kind around compiled components, with its scheduler."""
    import openvino_genai as ov_genai

    kind = pipeline_kind(path, "a pipeline with compiled-model blobs")
    scheduler = ov_genai.Scheduler.from_config(str(path / "scheduler" / "scheduler_config.json"))
    return getattr(ov_genai.Text2ImagePipeline, kind)(scheduler, *components)


#: What OpenVINO 2026.4.1's CPU plugin raises when its snippets code generator compiles a
#: static-shape UNet for one thread per stream (INFERENCE_NUM_THREADS=1, or NUM_STREAMS equal
#: to the cores): the reference LCM's UNet fails so (bench/streams measured it). The same
#: compile with SNIPPETS_MODE=DISABLE works; the worker then compiles again that way.
SNIPPETS_FAILURE = "Not enough gp registers in the pool"


def pipeline_from_buffers(path: Path, decryptor: Decryptor) -> Any:
    """genai's Text2ImagePipeline built from in-memory IR: each model's XML and weights read
    (and decrypted) by ``decryptor``, handed over as a string and an ov.Tensor; the configs
    read from their JSON files. Nothing decrypted touches the disk."""

    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    def ir(sub: str, stem: str = "openvino_model") -> tuple[str, Any]:
        xml = decryptor.read(f"{sub}/{stem}.xml").decode("utf-8")
        weights = np.frombuffer(decryptor.read(f"{sub}/{stem}.bin"), dtype=np.uint8)
        return xml, ov.Tensor(weights)

    kind = pipeline_kind(path, "an encrypted artifact")
    tokenizer = ov_genai.Tokenizer(
        *ir("tokenizer", "openvino_tokenizer"), *ir("tokenizer", "openvino_detokenizer")
    )
    vae_config = ov_genai.AutoencoderKL.Config(str(path / "vae_decoder" / "config.json"))
    vae_scale_factor = 2 ** (len(vae_config.block_out_channels) - 1)
    text_encoder = ov_genai.CLIPTextModel(
        *ir("text_encoder"),
        ov_genai.CLIPTextModel.Config(str(path / "text_encoder" / "config.json")),
        tokenizer,
    )
    unet = ov_genai.UNet2DConditionModel(
        *ir("unet"),
        ov_genai.UNet2DConditionModel.Config(str(path / "unet" / "config.json")),
        vae_scale_factor,
    )
    vae = ov_genai.AutoencoderKL(*ir("vae_decoder"), vae_config)
    scheduler = ov_genai.Scheduler.from_config(str(path / "scheduler" / "scheduler_config.json"))
    return getattr(ov_genai.Text2ImagePipeline, kind)(scheduler, text_encoder, unet, vae)


def stage_times(pipe: Any, total_s: float) -> StageTimes:
    """The stage durations of ``pipe``'s last generate, from genai's performance metrics."""
    m = pipe.get_performance_metrics()
    text_ms = sum(m.get_text_encoder_infer_duration().values())
    unet_us = sum(m.raw_metrics.unet_inference_durations)
    vae_ms = m.get_vae_decoder_infer_duration()
    return StageTimes(
        text_encoder_s=text_ms / 1e3, unet_s=unet_us / 1e6, vae_s=vae_ms / 1e3, total_s=total_s
    )


class GenaiPipeline:
    """openvino.genai Text2ImagePipeline, batch 1, compiled for one static size.

    ``GenaiPipeline(model, device, cache_dir, precision, ...)`` compiles a verified
    artifact as the worker serves it; :meth:`for_folder` compiles any model folder, with or
    without a manifest (model_build's gate: the fp32 IR, a candidate before its manifest).
    """

    def __init__(
        self,
        model: ServedModel,
        device: str,
        cache_dir: str,
        precision: str,
        cpu_threads: int | None = None,
        cpu_pinning: bool | None = None,
        text_encoder_device: str | None = None,
        width: int | None = None,
        height: int | None = None,
        blob_dir: str = "",
        blob_verify: VerifyMode = VerifyMode.MARKER,
    ) -> None:
        """``blob_dir``: import the compiled models from blobs there when valid, else compile
        and export them (worker/render/blobs.py); never for an encrypted artifact."""
        options = CompileOptions(
            device,
            cache_dir,
            precision,
            cpu_threads,
            cpu_pinning,
            text_encoder_device,
            blob_dir,
            blob_verify,
        )
        decryptor = None
        if model.manifest.encryption is not None:
            from worker.model.crypto import Decryptor

            decryptor = Decryptor(model.path, model.manifest.encryption, model.key_bytes)
        self._compile(
            Path(model.path),
            width or model.width,
            height or model.height,
            model.guidance_scale,
            model.cfg,
            options,
            decryptor,
            model_sha256=model.manifest.sha256,
        )

    @classmethod
    def for_folder(
        cls,
        path: Path,
        width: int,
        height: int,
        guidance_scale: float,
        *,
        cfg: bool = False,
        options: CompileOptions | None = None,
        key: bytes | None = None,
    ) -> GenaiPipeline:
        """The pipeline of the model folder ``path`` at ``width`` x ``height``.

        ``guidance_scale`` is compiled in (for a CFG UNet it sets the batch); ``cfg`` says
        the UNet has no guidance embedding (it matters only to the checks of a job).
        ``key``: the AES key of an encrypted artifact (its manifest says which files).
        Compiled-model blobs (``options.blob_dir``) only for a folder with a manifest.
        """
        from lcm_fleet.artifact.manifest import read_manifest

        options = options or CompileOptions()
        decryptor, model_sha256 = None, None
        if key is not None:
            from worker.model.crypto import Decryptor, check_key

            manifest = read_manifest(Path(path))
            check_key(manifest, key, path)
            decryptor = Decryptor(Path(path), manifest.encryption, key)
        elif options.blob_dir and (Path(path) / "manifest.json").is_file():
            model_sha256 = read_manifest(Path(path)).sha256
        pipe = cls.__new__(cls)
        pipe._compile(
            Path(path), width, height, guidance_scale, cfg, options, decryptor, model_sha256
        )
        return pipe

    def _compile(
        self,
        path: Path,
        width: int,
        height: int,
        guidance_scale: float,
        cfg: bool,
        options: CompileOptions,
        decryptor: Decryptor | None = None,
        model_sha256: str | None = None,
    ) -> None:
        import openvino_genai as ov_genai

        self._ov_genai = ov_genai
        self.path = path
        self.width, self.height = width, height
        self.guidance_scale, self.cfg = guidance_scale, cfg
        if decryptor is not None and (options.cache_dir or options.blob_dir):
            # A compile-cache entry or an exported blob holds the weights in the clear: none
            # for an encrypted model.
            logger.info(
                "compile cache and compiled-model blobs off for %s: its model files are encrypted",
                path,
            )
            options = replace(options, cache_dir="", blob_dir="")
        if model_sha256 is None or (options.blob_dir and known_kind(path) is None):
            options = replace(options, blob_dir="")
        if options.blob_dir:
            # Blobs replace the compile cache: a model that OpenVINO 2026.4 loaded from its
            # CACHE_DIR exports a blob its import_model cannot read ("Unable to read the
            # model"), so the models to export are compiled afresh, once per blob key.
            options = replace(options, cache_dir="")
        self.options = options
        #: The blob folder this pipeline was imported from or exported to (None: no blobs).
        self.blob_folder: Path | None = None
        self.loaded = LoadKind.COMPILED
        t0 = time.perf_counter()
        try:
            try:
                pipe = self._build(path, options, decryptor, model_sha256)
            except RuntimeError as e:
                if SNIPPETS_FAILURE not in str(e) or options.snippets_off:
                    raise
                logger.warning(
                    "OpenVINO's snippets code generator cannot compile %s for %s thread(s) "
                    "per stream (%s); compiling again with SNIPPETS_MODE=DISABLE",
                    path,
                    options.cpu_threads or "all",
                    SNIPPETS_FAILURE,
                )
                options = replace(options, snippets_off=True)
                self.options = options
                pipe = self._build(path, options, decryptor, model_sha256)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"could not compile {path} on {options.device}: {e}") from e
        self._pipe = pipe
        self.compile_s = time.perf_counter() - t0
        logger.info(
            "pipeline %s on %s for %dx%d in %.1fs (cache %s, blobs %s, precision %s%s)",
            self.loaded,
            options.device,
            self.width,
            self.height,
            self.compile_s,
            options.cache_dir or "off",
            self.blob_folder or "off",
            options.precision,
            ", snippets off" if options.snippets_off else "",
        )

    def _build(
        self,
        path: Path,
        options: CompileOptions,
        decryptor: Decryptor | None,
        model_sha256: str | None,
    ) -> Any:
        """A new genai pipeline of ``path``: from in-memory IR (encrypted), through its
        compiled-model blobs, or reshaped and compiled (a failed compile leaves genai's
        models half compiled: a retry starts from a new one)."""
        if decryptor is not None:
            pipe = pipeline_from_buffers(path, decryptor)
        elif options.blob_dir and model_sha256 is not None:
            return self._load_with_blobs(path, options, model_sha256)
        else:
            pipe = self._ov_genai.Text2ImagePipeline(str(path))
        self._reshape_and_compile(pipe, options)
        return pipe

    def _reshape_and_compile(self, pipe: Any, options: CompileOptions) -> None:
        # Batch 1: a job's N images are N seeded calls (genai 2026.4 breaks LCM when
        # reshaped for num_images_per_prompt > 1). For an LCM the guidance is an UNet
        # input; for a CFG UNet it sets the batch (2 when guidance_scale > 1).
        pipe.reshape(1, self.height, self.width, self.guidance_scale)
        pipe.compile(*options.devices(), config=options.config())

    def _load_with_blobs(self, path: Path, options: CompileOptions, model_sha256: str) -> Any:
        """Import the compiled models from their blob folder when it is valid for this
        artifact, size, devices, properties and OpenVINO; otherwise compile and export them.
        A stale or corrupt folder, or an import that fails, is warned about and compiled."""
        from worker.render.blobs import BlobState, check_blobs, discard_blobs, export_blobs

        key = blob_key(path, model_sha256, self.width, self.height, self.guidance_scale, options)
        folder = key.folder(Path(options.blob_dir))
        self.blob_folder = folder
        check = check_blobs(folder, key, options.blob_verify)
        if check.valid:
            try:
                components = import_components(path, folder, options)
            except Exception as e:
                logger.warning(
                    "could not import the compiled-model blobs in %s (%s); compiling instead",
                    folder,
                    e,
                )
                discard_blobs(folder)
            else:
                self.loaded = LoadKind.IMPORTED
                return assemble(path, components)
        elif check.state is BlobState.MISSING:
            logger.info("%s: compiling, then exporting them", check.reason)
        else:
            logger.warning("%s; compiling instead, then exporting them again", check.reason)
        components = compile_components(path, self.width, self.height, self.guidance_scale, options)
        t0 = time.perf_counter()
        if export_blobs(
            folder, key, lambda tmp: export_components(components, tmp), options.blob_verify
        ):
            logger.info("compiled models exported to %s in %.1fs", folder, time.perf_counter() - t0)
        return assemble(path, components)

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance_scale: float,
        deadline: float | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        import numpy as np

        kwargs: dict[str, Any] = {}
        cancelled: list[int] = []
        requested: list[bool] = []
        if deadline is not None or on_step is not None:

            def callback(step: int, num_steps: int, _latent: Any) -> bool:
                # genai calls this after each denoising step; True stops the loop.
                if on_step is not None and on_step(step + 1, num_steps):
                    cancelled.append(step)
                    requested.append(True)
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    cancelled.append(step)
                    return True
                return False

            kwargs["callback"] = callback
        t0 = time.perf_counter()
        out = self._pipe.generate(
            prompt,
            width=self.width,
            height=self.height,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=self._ov_genai.CppStdGenerator(seed),
            **kwargs,
        )
        total = time.perf_counter() - t0
        if cancelled:
            why = "the job was cancelled" if requested else "the deadline passed"
            raise RenderCancelled(
                f"render stopped after denoising step {cancelled[0] + 1} of {steps}: {why}",
                requested=bool(requested),
            )
        pixels = np.array(out.data[0], copy=True)
        return pixels, stage_times(self._pipe, total)
