"""Stable Diffusion 1.5 base + LCM-LoRA: fuse the LoRA into the base, switch to LCMScheduler.

Users get LCM speed from their own SD1.5 fine-tune by fusing an LCM-LoRA (e.g.
``latent-consistency/lcm-lora-sdv1-5``) into it. :func:`fuse_lcm_lora` loads the base in
fp32, loads the LoRA (``load_lora_weights``), checks that every LoRA tensor found a place
in the base, fuses it (``fuse_lora(lora_scale=scale)``), drops the LoRA layers
(``unload_lora_weights``, so the saved weights are the fused ones), swaps the scheduler
for ``LCMScheduler.from_config(...)`` and saves a diffusers folder that
:func:`model_build.export.export_ir` exports as usual.

The folder is saved as a **StableDiffusionPipeline with an LCMScheduler**, not as a
LatentConsistencyModelPipeline. Tried both with openvino-genai 2026.4.1
(``reshape(1, H, W, g)``, ``compile``, ``generate(..., generator=CppStdGenerator(seed))``
as the worker does): genai loads and renders both, with identical pixels, because it
chooses between a guidance embedding and classifier-free guidance from the UNet's
``time_cond_proj_dim``, not from the class name; with no ``time_cond_proj_dim`` it feeds
no ``timestep_cond`` and, for ``guidance_scale > 1``, doubles the UNet batch for CFG.
The class decides what diffusers and optimum-intel do with the folder, and there only
the StableDiffusionPipeline works: diffusers' LatentConsistencyModelPipeline (and
optimum's OVLatentConsistencyModelPipeline over the exported IR) always computes a
guidance embedding of width ``unet.config.time_cond_proj_dim`` and fails on a plain
SD1.5 UNet with ``TypeError: unsupported operand type(s) for //: 'NoneType' and 'int'``.
StableDiffusionPipeline + LCMScheduler is also diffusers' documented LCM-LoRA usage and
means what genai does: CFG when ``guidance_scale > 1`` (LCM-LoRA wants 1.0-2.0).

Because such an UNet has no guidance input, genai compiles it for one guidance regime:
reshaped with ``guidance_scale > 1`` the UNet has batch 2 and a call with
``guidance_scale=1`` fails ("model input (shape=[2,77,...]) and the tensor
(shape=(1.77....)) are incompatible"); reshaped with 1.0, any ``guidance_scale > 1``
fails ("text_embedding_batch_size <= compiled_input_shape[0]").
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import sha256_file
from model_build.errors import BuildInputError
from model_build.export import prepare_output_dir
from model_build.sources import describe_source

logger = logging.getLogger(__name__)

#: What diffusers' ``save_lora_weights`` writes by default.
DEFAULT_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: The pipeline class of the fused folder (see the module docstring for why).
FUSED_PIPELINE_CLASS = "StableDiffusionPipeline"
SCHEDULER_CLASS = "LCMScheduler"
MAX_LORA_SCALE = 4.0
_ADAPTER = "lcm_lora"


def _is_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith(("/", ".")) and "\\" not in value


def _check_base(base: str) -> None:
    path = Path(base)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise BuildInputError(
                f"base={base!r} is a local path without model_index.json; pass a diffusers "
                "Stable Diffusion 1.5 pipeline folder (as written by save_pretrained) or a hub id"
            )
    elif not _is_hub_id(base):
        raise BuildInputError(
            f"base={base!r} is neither an existing folder nor a hub id of the form "
            "'owner/name' (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)"
        )


def _resolve_lora(lora: str, weight_name: str | None) -> tuple[str, str | None]:
    """(what to pass to load_lora_weights, weight_name); local names are checked here."""
    path = Path(lora)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise BuildInputError(
                f"lora={lora!r} is not a .safetensors file; pass a LoRA in safetensors "
                "format, the folder holding it, or a hub id"
            )
        if weight_name is not None and weight_name != path.name:
            raise BuildInputError(
                f"weight_name={weight_name!r} contradicts lora={lora!r}, a file; "
                "pass the folder with weight_name, or the file alone"
            )
        return str(path.parent), path.name
    if path.is_dir():
        if weight_name is not None:
            if not (path / weight_name).is_file():
                raise BuildInputError(
                    f"weight_name={weight_name!r} is not a file in lora={lora!r}; "
                    "pass the name of the LoRA's .safetensors file in that folder"
                )
            return str(path), weight_name
        if (path / DEFAULT_LORA_WEIGHT_NAME).is_file():
            return str(path), DEFAULT_LORA_WEIGHT_NAME
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) == 1:
            return str(path), found[0]
        raise BuildInputError(
            f"lora={lora!r} is a folder with "
            f"{'no' if not found else str(len(found))} .safetensors files "
            f"({', '.join(found) or 'none'}) and no {DEFAULT_LORA_WEIGHT_NAME}; "
            "pass weight_name or the file itself"
        )
    if path.exists() or not _is_hub_id(lora):
        raise BuildInputError(
            f"lora={lora!r} is neither an existing folder or .safetensors file nor a hub id "
            "of the form 'owner/name' (e.g. latent-consistency/lcm-lora-sdv1-5)"
        )
    return lora, weight_name


def _describe_lora(lora: str, weight_name: str | None, revision: str) -> dict[str, Any]:
    path = Path(lora)
    if path.is_file():
        return {
            "kind": "local",
            "path": str(path.resolve()),
            "content_sha256": sha256_file(path),
            "weight_name": path.name,
        }
    info = describe_source(lora, revision)
    if info["kind"] == "local" and weight_name is not None:
        info["weight_sha256"] = sha256_file(path / weight_name)
    return {**info, "weight_name": weight_name}


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise BuildInputError(f"scale={scale!r} must be a number in (0, {MAX_LORA_SCALE:g}]")
    if not (math.isfinite(scale) and 0 < scale <= MAX_LORA_SCALE):
        raise BuildInputError(
            f"scale={scale!r} is outside (0, {MAX_LORA_SCALE:g}]; LCM-LoRAs are fused at 1.0 "
            "(the default)"
        )
    return float(scale)


def _check_unet(base: str, unet: Any) -> None:
    cfg = unet.config
    if cfg.get("time_cond_proj_dim") is not None:
        raise BuildInputError(
            f"base={base!r} is already an LCM (its UNet has time_cond_proj_dim="
            f"{cfg['time_cond_proj_dim']}); export it directly, without an LCM-LoRA"
        )
    if cfg.get("addition_embed_type") is not None or cfg.get("in_channels") != 4:
        raise BuildInputError(
            f"base={base!r} is not a Stable Diffusion 1.5-family text-to-image model "
            f"(UNet in_channels={cfg.get('in_channels')}, addition_embed_type="
            f"{cfg.get('addition_embed_type')!r}); pass an SD1.5 base (for SDXL use an SDXL "
            "LCM-LoRA and pipeline)"
        )


def _lora_tensor_count(state_dict: dict[str, Any]) -> int:
    return sum(1 for k in state_dict if "lora" in k and not k.endswith("alpha"))


def _loaded_tensor_count(pipe: Any) -> int:
    from peft.utils import get_peft_model_state_dict

    adapters = pipe.get_list_adapters()
    return sum(
        len(get_peft_model_state_dict(getattr(pipe, name), adapter_name=_ADAPTER))
        for name, names in adapters.items()
        if _ADAPTER in names
    )


def _lcm_scheduler(config: Any) -> Any:
    from diffusers import LCMScheduler

    # Keep the base's betas and offsets; drop keys only the base's scheduler knows
    # (PNDM's skip_prk_steps...), which LCMScheduler would warn about and save anyway.
    known = set(inspect.signature(LCMScheduler.__init__).parameters)
    return LCMScheduler.from_config({k: v for k, v in config.items() if k in known})


def fuse_lcm_lora(
    base: str,
    lora: str,
    out_dir: Path,
    scale: float = 1.0,
    revision: str = "main",
    weight_name: str | None = None,
    *,
    lora_revision: str = "main",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fuse ``lora`` into ``base`` at ``scale``, switch to LCMScheduler, save at ``out_dir``.

    ``base`` is a diffusers SD1.5 folder or hub id (``revision``); ``lora`` a folder, a
    ``.safetensors`` file or a hub id (``lora_revision``, ``weight_name``). ``out_dir``
    must be new or empty unless ``overwrite``. Returns the source description for the
    manifest.
    """
    scale = _check_scale(scale)
    base, lora = str(base), str(lora)
    _check_base(base)
    lora_ref, weight_name = _resolve_lora(lora, weight_name)
    out_dir = Path(out_dir)
    for name, value in (("base", base), ("lora", lora)):
        if Path(value).exists() and out_dir.resolve() in (
            Path(value).resolve(),
            *Path(value).resolve().parents,
        ):
            raise BuildInputError(
                f"out_dir={str(out_dir)!r} would overwrite {name}={value!r}; choose another folder"
            )
    prepare_output_dir(out_dir, overwrite)

    import torch
    from diffusers import StableDiffusionPipeline

    try:
        pipe: Any = StableDiffusionPipeline.from_pretrained(
            base,
            revision=revision,
            torch_dtype=torch.float32,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except Exception as e:
        raise BuildInputError(
            f"base={base!r} (revision {revision!r}) could not be loaded as a Stable Diffusion "
            f"pipeline: {e}; pass a diffusers SD1.5 folder or a reachable hub id"
        ) from e
    _check_unet(base, pipe.unet)

    hub_kwargs: dict[str, Any] = {"weight_name": weight_name}
    if not Path(lora_ref).exists():
        hub_kwargs["revision"] = lora_revision
    try:
        state_dict, _alphas = pipe.lora_state_dict(lora_ref, **hub_kwargs)
    except Exception as e:
        raise BuildInputError(
            f"lora={lora!r} (weight_name {weight_name!r}) could not be read as a LoRA: {e}; "
            "pass a diffusers/kohya LoRA .safetensors, its folder or a reachable hub id"
        ) from e
    expected = _lora_tensor_count(state_dict)
    del state_dict
    try:
        pipe.load_lora_weights(lora_ref, adapter_name=_ADAPTER, **hub_kwargs)
    except Exception as e:
        raise BuildInputError(
            f"lora={lora!r} does not fit base={base!r}: {e}; use a LoRA trained for this "
            "base's architecture (an SD1.5 LCM-LoRA such as latent-consistency/lcm-lora-sdv1-5)"
        ) from e
    loaded = _loaded_tensor_count(pipe)
    if loaded == 0 or loaded < expected:
        raise BuildInputError(
            f"lora={lora!r}: only {loaded} of its {expected} LoRA tensors match modules of "
            f"base={base!r}; its keys are for another architecture or naming. Use a LoRA "
            "trained for this base (an SD1.5 LCM-LoRA such as latent-consistency/lcm-lora-sdv1-5)"
        )

    try:
        pipe.fuse_lora(lora_scale=scale, adapter_names=[_ADAPTER])
        pipe.unload_lora_weights()
    except Exception as e:
        raise BuildInputError(
            f"lora={lora!r} could not be fused into base={base!r} at scale={scale}: {e}"
        ) from e
    pipe.scheduler = _lcm_scheduler(pipe.scheduler.config)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    logger.info(
        "fused LoRA %s (%d tensors, scale %g) into %s with LCMScheduler: %s",
        lora,
        loaded,
        scale,
        base,
        out_dir,
    )
    return {
        "kind": "lcm-lora-fused",
        "base": describe_source(base, revision),
        "lora": _describe_lora(lora, weight_name, lora_revision),
        "lora_scale": scale,
        "lora_tensors": loaded,
        "scheduler": SCHEDULER_CLASS,
        "pipeline_class": FUSED_PIPELINE_CLASS,
    }
