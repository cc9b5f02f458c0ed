"""Export a diffusers LCM (local folder or hub id) to an OpenVINO IR folder with optimum-intel.

The IR folder holds every part openvino.genai's Text2ImagePipeline needs: text
encoder, UNet, VAE decoder (and encoder), scheduler config, and the OpenVINO
tokenizer/detokenizer IR.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

from model_build.errors import BuildInputError, ExportError
from model_build.progress import elapsed_bar
from model_build.reference.evaluate import REFERENCE_JSON

logger = logging.getLogger(__name__)

#: Files an export must produce for the worker to load it.
REQUIRED_IR_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/openvino_model.xml",
    "text_encoder/openvino_model.bin",
    "unet/openvino_model.xml",
    "unet/openvino_model.bin",
    "unet/config.json",
    "vae_decoder/openvino_model.xml",
    "vae_decoder/openvino_model.bin",
    "tokenizer/openvino_tokenizer.xml",
    "tokenizer/openvino_tokenizer.bin",
)


def check_source(source: str) -> None:
    """A local folder must be a diffusers pipeline; anything else is taken as a hub id."""
    path = Path(source)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise BuildInputError(
                f"source={source!r} is a local path without model_index.json; pass a diffusers "
                "pipeline folder (as written by save_pretrained) or a hub id"
            )
        return
    if source.count("/") != 1 or source.startswith(("/", ".")):
        raise BuildInputError(
            f"source={source!r} is neither an existing folder nor a hub id of the form "
            "'owner/name' (e.g. SimianLuo/LCM_Dreamshaper_v7)"
        )


def missing_ir_files(ir_dir: Path) -> list[str]:
    return [rel for rel in REQUIRED_IR_FILES if not (ir_dir / rel).is_file()]


def prepare_output_dir(out_dir: Path, overwrite: bool) -> Path:
    """An output folder must be new or empty, unless the operator asked to overwrite it."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise BuildInputError(
                f"output folder {str(out_dir)!r} is not empty; "
                "choose a new folder or pass --overwrite"
            )
        shutil.rmtree(out_dir)
    return out_dir


def export_ir(
    source: str,
    out_dir: Path,
    *,
    revision: str = "main",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export ``source`` to full-precision (fp32) OpenVINO IR in ``out_dir``."""
    check_source(source)
    out_dir = prepare_output_dir(Path(out_dir), overwrite)
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    logger.info("exporting %s to OpenVINO IR (fp32) in %s", source, out_dir)
    try:
        with warnings.catch_warnings(), elapsed_bar(f"export {source}", progress):
            # Tracing warns about every data-dependent branch of the diffusers models.
            warnings.simplefilter("ignore")
            main_export(
                model_name_or_path=source,
                output=out_dir,
                task="text-to-image",
                library_name="diffusers",
                revision=revision,
                ov_config=OVConfig(dtype="fp32"),
                convert_tokenizer=True,
            )
    except Exception as e:
        raise ExportError(f"optimum-intel could not export {source!r}: {e}") from e
    missing = missing_ir_files(out_dir)
    if missing:
        raise ExportError(
            f"export of {source!r} is incomplete, missing: {', '.join(missing)}; "
            "is the source a text-to-image LCM/SD pipeline?"
        )
    # A reference-domain model's description (its split, recipe and figures) travels with
    # the artifact: the quality gate scores prompt adherence from it.
    described = Path(source) / REFERENCE_JSON
    if described.is_file():
        shutil.copy2(described, out_dir / REFERENCE_JSON)
    return out_dir
