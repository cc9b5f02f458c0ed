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
from worker.errors import ModelLoadError, RenderCancelled
from worker.model.artifact import ServedModel

if TYPE_CHECKING:
    from worker.model.crypto import Decryptor

logger = logging.getLogger(__name__)

#: The genai pipeline constructor of each diffusers pipeline class (model_index.json).
PIPELINE_KINDS = {
    "LatentConsistencyModelPipeline": "latent_consistency_model",
    "StableDiffusionPipeline": "stable_diffusion",
}


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
    #: SNIPPETS_MODE=DISABLE on the CPU: OpenVINO's fused subgraph code generator off. Set
    #: when it cannot compile a model (see :data:`SNIPPETS_FAILURE`), not by users.
    snippets_off: bool = False

    def devices(self) -> tuple[str, ...]:
        return compile_devices(self.device, self.text_encoder_device)

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


#: What OpenVINO 2026.4.1's CPU plugin raises when its snippets code generator compiles a
#: static-shape UNet for one thread per stream (INFERENCE_NUM_THREADS=1, or NUM_STREAMS equal
#: to the cores): the reference LCM's UNet fails so (bench/streams measured it). The same
#: compile with SNIPPETS_MODE=DISABLE works; the worker then compiles again that way.
SNIPPETS_FAILURE = "Not enough gp registers in the pool"


def pipeline_from_buffers(path: Path, decryptor: Decryptor) -> Any:
    """genai's Text2ImagePipeline built from in-memory IR: each model's XML and weights read
    (and decrypted) by ``decryptor``, handed over as a string and an ov.Tensor; the configs
    read from their JSON files. Nothing decrypted touches the disk."""
    import json

    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    def ir(sub: str, stem: str = "openvino_model") -> tuple[str, Any]:
        xml = decryptor.read(f"{sub}/{stem}.xml").decode("utf-8")
        weights = np.frombuffer(decryptor.read(f"{sub}/{stem}.bin"), dtype=np.uint8)
        return xml, ov.Tensor(weights)

    index = json.loads((path / "model_index.json").read_text())
    kind = PIPELINE_KINDS.get(str(index.get("_class_name")))
    if kind is None:
        raise ModelLoadError(
            f"refusing to serve {path}: model_index.json names {index.get('_class_name')!r}; "
            f"an encrypted artifact loads only as {', '.join(PIPELINE_KINDS)}"
        )
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
    ) -> None:
        options = CompileOptions(
            device, cache_dir, precision, cpu_threads, cpu_pinning, text_encoder_device
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
        """
        decryptor = None
        if key is not None:
            from lcm_fleet.artifact.manifest import read_manifest
            from worker.model.crypto import Decryptor, check_key

            manifest = read_manifest(Path(path))
            check_key(manifest, key, path)
            decryptor = Decryptor(Path(path), manifest.encryption, key)
        pipe = cls.__new__(cls)
        pipe._compile(
            Path(path), width, height, guidance_scale, cfg, options or CompileOptions(), decryptor
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
    ) -> None:
        import openvino_genai as ov_genai

        self._ov_genai = ov_genai
        self.path, self.options = path, options
        self.width, self.height = width, height
        self.guidance_scale, self.cfg = guidance_scale, cfg
        if decryptor is not None and options.cache_dir:
            # A compile-cache blob holds the weights in the clear: none for an encrypted model.
            logger.info("compile cache off for %s: its model files are encrypted", path)
            options = replace(options, cache_dir="")
            self.options = options
        t0 = time.perf_counter()
        try:
            try:
                pipe = self._build(path, options, decryptor)
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
                pipe = self._build(path, options, decryptor)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"could not compile {path} on {options.device}: {e}") from e
        self._pipe = pipe
        self.compile_s = time.perf_counter() - t0
        logger.info(
            "pipeline compiled on %s for %dx%d in %.1fs (cache %s, precision %s%s)",
            options.device,
            self.width,
            self.height,
            self.compile_s,
            options.cache_dir or "off",
            options.precision,
            ", snippets off" if options.snippets_off else "",
        )

    def _build(self, path: Path, options: CompileOptions, decryptor: Decryptor | None) -> Any:
        """A new genai pipeline of ``path``, reshaped and compiled (a failed compile leaves
        genai's models half compiled: a retry starts from a new one)."""
        if decryptor is None:
            pipe = self._ov_genai.Text2ImagePipeline(str(path))
        else:
            pipe = pipeline_from_buffers(path, decryptor)
        # Batch 1: a job's N images are N seeded calls (genai 2026.4 breaks LCM when
        # reshaped for num_images_per_prompt > 1). For an LCM the guidance is an UNet
        # input; for a CFG UNet it sets the batch (2 when guidance_scale > 1).
        pipe.reshape(1, self.height, self.width, self.guidance_scale)
        pipe.compile(*options.devices(), config=options.config())
        return pipe

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
