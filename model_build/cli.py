"""``lcm-build``: make the model artifacts that workers serve.

    lcm-build tiny OUT                 a tiny random LCM (diffusers folder), offline
    lcm-build reference OUT            train the reference LCM (procedural shapes), offline
    lcm-build reference-score TARGET   prompt adherence of a reference-domain model or PNGs
    lcm-build train-decoder MODEL OUT  train a TAESD-architecture decoder for MODEL, offline
    lcm-build export SOURCE OUT        diffusers folder or hub id -> fp32 OpenVINO IR artifact
    lcm-build quantize IR OUT          fp32 IR artifact -> INT8-UNet artifact (NNCF)
    lcm-build build SOURCE OUT         export + quantize (fp32 kept in OUT.fp32)
    lcm-build verify ARTIFACT          check every file against the manifest
    lcm-build publish ARTIFACT NAME    upload to S3 as NAME@<version>, then point NAME@latest at it
    lcm-build list [NAME]              published versions in S3 (LCM_S3_* settings)

Exit codes: 0 done, 1 the build failed, 2 bad input (the message says how to fix it),
3 the candidate failed the quality gate (quality.json and contact_sheet.png say why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lcm_fleet.artifact.kinds import BuildPrecision, names
from lcm_fleet.errors import LcmError, RegistryInputError
from model_build.build import EvalOptions, QualityGateFailed
from model_build.calibration import CalibrationSpec
from model_build.errors import BuildError, BuildInputError
from model_build.train_decoder import DecoderRecipe as DecoderDefaults
from model_build.vae_decoder import VAE_DECODERS, VaeDecoderOptions, model_folder_of

logger = logging.getLogger("model_build")


def _tome_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tome",
        metavar="RATIO",
        default="0",
        help="token merging in the UNet IR: merge this share of the highest-resolution tokens "
        "before each self-attention there (0 to 0.75; default 0, off). The IR is then static "
        "at the build's size; the quality gate judges it (docs/model-build.md)",
    )


def _tome(args: argparse.Namespace) -> float:
    from model_build.tome import check_ratio

    return check_ratio(args.tome)


def _calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--samples", type=int, default=200, help="UNet calls to calibrate on (default 200)"
    )
    p.add_argument(
        "--prompts",
        default="calibration",
        help="shipped prompt set name or a text file, one prompt per line",
    )
    p.add_argument("--width", type=int, help="target width (default: the model's native size)")
    p.add_argument("--height", type=int, help="target height (default: the model's native size)")
    p.add_argument("--steps", type=int, default=4, help="LCM steps while calibrating (default 4)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="guidance while calibrating, evaluating and as the served default "
        "(default 8.0 for an LCM, 1.0 for an SD1.5 + LCM-LoRA model)",
    )
    p.add_argument(
        "--precision",
        choices=names(BuildPrecision),
        default="int8",
        help="int8: NNCF INT8 UNet (default); hybrid: optimum-intel hybrid; "
        "fp16 / fp32: no quantization",
    )
    p.add_argument(
        "--vae-decoder",
        choices=VAE_DECODERS,
        default="sd",
        help="the candidate's VAE decoder: sd (default, as exported), int8-weights (NNCF INT8 "
        "weights), int8 (NNCF INT8, calibrated on the calibration renders' latents), taesd "
        "(a TAESD tiny decoder from --taesd)",
    )
    p.add_argument(
        "--taesd",
        metavar="SOURCE",
        help="for --vae-decoder taesd: a diffusers AutoencoderTiny folder or hub id",
    )
    p.add_argument("--taesd-revision", default="main", help="hub revision of --taesd")
    p.add_argument(
        "--vae-samples",
        type=int,
        help="for --vae-decoder int8: latents to calibrate on, one per render "
        "(default: ceil(samples / steps), the renders the UNet's calibration makes)",
    )
    p.add_argument(
        "--eval-prompts",
        default="eval",
        help="quality-gate prompts: shipped set name or a file (default: eval, 20 prompts)",
    )
    p.add_argument(
        "--eval-seeds", type=int, default=2, help="seeds per evaluation prompt (default 2)"
    )
    p.add_argument(
        "--speed-runs", type=int, default=3, help="timed renders per artifact (default 3)"
    )
    p.add_argument(
        "--accept-below-gate",
        metavar="REASON",
        help="keep a candidate below the LCM_GATE_* thresholds; REASON goes in the manifest",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcm-build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny", help="build the tiny random LCM offline")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=128, help="image size, multiple of 8 (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kind",
        choices=("lcm", "sd15", "taesd"),
        default="lcm",
        help="lcm: an LCM (default); sd15: an SD1.5-family base for --lora builds; taesd: a "
        "tiny AutoencoderTiny for --vae-decoder taesd (--size does not apply)",
    )

    p = sub.add_parser(
        "reference",
        help="train the reference LCM offline on procedural shapes, then score its adherence",
    )
    p.add_argument("out", type=Path, help="diffusers folder to write (resumes if interrupted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, help="torch threads (default: all cores; the weights depend on it)"
    )
    p.add_argument("--no-eval", action="store_true", help="skip the adherence evaluation")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "reference-score",
        help="prompt adherence of a reference-domain model (diffusers or OpenVINO) or of PNGs",
    )
    p.add_argument(
        "target", type=Path, help="diffusers folder, OpenVINO artifact, or a folder of fleet PNGs"
    )
    p.add_argument(
        "--captions", type=Path, help="one caption per line (default: the 112 evaluation captions)"
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds per caption (default 2)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance-scale", type=float, default=8.0)
    p.add_argument(
        "--precision",
        choices=("f32", "default"),
        default="f32",
        help="OpenVINO artifacts: f32 (default) or the device default (as workers serve)",
    )
    p.add_argument("--json", type=Path, help="also write the whole report here")
    p.add_argument("--sheet", type=Path, help="also write the renders as a captioned grid (PNG)")

    p = sub.add_parser(
        "train-decoder",
        help="train a tiny decoder (TAESD architecture) for a model by distilling its VAE "
        "decoder on latents the model renders, offline",
    )
    p.add_argument("model", type=Path, help="the model: a local diffusers pipeline folder")
    p.add_argument(
        "out",
        type=Path,
        help="AutoencoderTiny folder to write (for --taesd OUT; MODEL/taesd is the model's own, "
        "which --vae-decoder taesd takes without --taesd)",
    )
    p.add_argument("--steps", type=int, help=f"training steps (default {DecoderDefaults.steps})")
    p.add_argument(
        "--resume", action="store_true", help="continue the run OUT holds (same options)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, help="torch threads (default: all cores; the weights depend on it)"
    )
    p.add_argument(
        "--prompts",
        default="calibration",
        help="prompts to render the latents from: shipped set name or a text file (default: "
        "the reference domain's training captions for a reference model, else calibration)",
    )
    p.add_argument(
        "--eval-prompts",
        default="eval",
        help="prompts to measure the decoder on (default: the gate's captions for a reference "
        "model, else the shipped eval set)",
    )
    p.add_argument(
        "--seeds-per-prompt",
        type=int,
        help=f"renders per prompt (default {DecoderDefaults.seeds_per_prompt})",
    )
    p.add_argument(
        "--channels", type=int, help="decoder width (default: from the model's VAE; TAESD's 64)"
    )
    p.add_argument(
        "--blocks",
        help="decoder blocks per stage, comma-separated (default: from the model's VAE; "
        "TAESD's 3,3,3,1)",
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("tiny-lora", help="build a tiny random LoRA for a tiny sd15 base, offline")
    p.add_argument("base", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="export a diffusers LCM to an fp32 OpenVINO IR artifact")
    p.add_argument("source", help="diffusers folder or hub id (owner/name)")
    p.add_argument("out", type=Path)
    p.add_argument("--revision", default="main")
    p.add_argument("--overwrite", action="store_true")
    _tome_arg(p)

    p = sub.add_parser("quantize", help="quantize an fp32 IR artifact's UNet to INT8")
    p.add_argument("ir", type=Path)
    p.add_argument("out", type=Path)
    _calibration_args(p)

    p = sub.add_parser("build", help="export and quantize in one go")
    p.add_argument("source")
    p.add_argument("out", type=Path)
    p.add_argument("--revision", default="main")
    p.add_argument("--work-dir", type=Path, help="where the fp32 artifact goes (default OUT.fp32)")
    p.add_argument(
        "--lora",
        help="an LCM-LoRA (folder, .safetensors file or hub id) to fuse into "
        "SOURCE, an SD1.5-family base; the fused model goes to OUT.fused",
    )
    p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA scale (default 1.0)")
    p.add_argument("--lora-weight-name", help="file inside a LoRA folder or hub repo")
    _tome_arg(p)
    _calibration_args(p)

    p = sub.add_parser("verify", help="check an artifact's files against its manifest")
    p.add_argument("artifact", type=Path)

    p = sub.add_parser(
        "encrypt",
        help="copy an artifact with its IR files encrypted (AES-256-GCM) for LCM_MODEL_KEY",
    )
    p.add_argument("artifact", type=Path, help="a built artifact (plaintext)")
    p.add_argument("out", type=Path, help="the new, encrypted artifact folder")
    p.add_argument(
        "--key-file",
        type=Path,
        help="file holding the base64 32-byte key (default: the LCM_MODEL_KEY variable); "
        "make one with `openssl rand -base64 32 > model.key`",
    )

    _registry_parsers(sub)
    return parser


def _encrypt(args: argparse.Namespace) -> int:
    from worker.errors import ModelLoadError
    from worker.model.crypto import KEY_SETTING, encrypt_artifact, key_id, parse_key, read_key_file

    try:
        if args.key_file is not None:
            key = read_key_file(args.key_file)
        elif os.environ.get(KEY_SETTING):
            key = parse_key(os.environ[KEY_SETTING])
        else:
            raise BuildInputError(
                f"encrypt needs a key: --key-file FILE or {KEY_SETTING} "
                "(make one with `openssl rand -base64 32 > model.key`)"
            )
        manifest = encrypt_artifact(args.artifact, args.out, key)
    except ModelLoadError as e:
        raise BuildInputError(str(e)) from e
    print(f"encrypted {args.artifact} -> {args.out} (key id {key_id(key)}); {manifest}")
    return 0


def _evaluation(args: argparse.Namespace) -> EvalOptions:
    if args.eval_seeds < 1 or args.speed_runs < 1:
        raise BuildInputError("--eval-seeds and --speed-runs must be at least 1")
    if args.accept_below_gate is not None and not args.accept_below_gate.strip():
        raise BuildInputError(
            "--accept-below-gate needs a reason, e.g. 'checked by eye, see ticket'"
        )
    return EvalOptions(
        prompts=args.eval_prompts,
        seeds=tuple(range(args.eval_seeds)),
        speed_runs=args.speed_runs,
        override=args.accept_below_gate,
    )


def _spec(args: argparse.Namespace) -> CalibrationSpec:
    if (args.width is None) != (args.height is None):
        raise BuildInputError("pass both --width and --height, or neither (native size)")
    return CalibrationSpec(
        width=args.width,
        height=args.height,
        samples=args.samples,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
    )


def _vae(args: argparse.Namespace, model_dir: Path | None) -> VaeDecoderOptions:
    """The decoder options; ``--vae-decoder taesd`` without ``--taesd`` takes the model
    folder's own trained decoder (``MODEL/taesd``) when it has one."""
    options = VaeDecoderOptions(
        kind=args.vae_decoder,
        taesd=args.taesd,
        taesd_revision=args.taesd_revision,
        samples=args.vae_samples,
    ).with_model_taesd(model_dir)
    options.check()
    return options


def _summary(result) -> None:
    rows = {
        "artifact": str(result.artifact),
        "manifest sha256": result.manifest_sha256,
        "precision": result.precision,
        "shape": f"{result.shape['width']}x{result.shape['height']} batch {result.shape['batch']}",
    }
    if result.fake_quantize_count:
        rows["FakeQuantize ops"] = str(result.fake_quantize_count)
    if result.tome:
        rows["token merging"] = (
            f"ratio {result.tome['ratio']}: {result.tome['merged_tokens']} of "
            f"{result.tome['tokens']} tokens merged in {result.tome['self_attentions']} "
            f"self-attentions (IR static at {result.tome['width']}x{result.tome['height']})"
        )
    if result.quality is not None:
        a, sp = result.quality["aggregate"], result.quality["speed"]
        if a["psnr_db_mean"] is None:  # infinite: the renders are identical
            a = {**a, "psnr_db_mean": "inf", "psnr_db_min": "inf"}
        rows["vs fp32 (f32 inference)"] = (
            f"PSNR {a['psnr_db_mean']} dB (min {a['psnr_db_min']}), SSIM {a['ssim_mean']} "
            f"(min {a['ssim_min']}), mean |diff| {a['mean_abs_diff_mean']} "
            f"over {a['images']} images"
        )
        rows["speed (default precision)"] = (
            f"UNet {sp['candidate']['unet_s']}s vs {sp['reference']['unet_s']}s "
            f"(x{sp['unet_speedup']}), VAE {sp['candidate'].get('vae_s')}s vs "
            f"{sp['reference'].get('vae_s')}s (x{sp.get('vae_speedup')}), "
            f"pipeline {sp['candidate']['pipeline_s']}s vs "
            f"{sp['reference']['pipeline_s']}s (x{sp['pipeline_speedup']})"
        )
    adherence = (result.quality or {}).get("adherence")
    if adherence:
        rows["prompt adherence"] = (
            f"{adherence['candidate_served']['adherence_pct']}% served, "
            f"{adherence['candidate_f32']['adherence_pct']}% at f32, fp32 reference "
            f"{adherence['reference_f32']['adherence_pct']}% ({adherence['images_each']} images "
            f"each; {-adherence['drop_points']:+.2f} points vs fp32)"
        )
    if result.gate is not None:
        g = result.gate
        rows["quality gate"] = (
            "passed"
            if g.passed
            else (
                f"FAILED ({'; '.join(g.failures)})"
                + (f", accepted: {g.override}" if g.override else "")
            )
        )
        rows["contact sheet"] = str(result.artifact / "contact_sheet.png")
    rows["peak memory"] = f"{result.peak_rss_gib} GiB RSS (build process)"
    for stage, seconds in result.durations_s.items():
        rows[f"{stage} s"] = f"{seconds:.1f}"
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key.ljust(width)}  {value}")


def run(args: argparse.Namespace) -> int:
    if args.command in ("publish", "list"):
        return _run_registry(args)
    if args.command == "tiny":
        from model_build.tiny import TinySpec, build_tiny, build_tiny_sd15, build_tiny_taesd

        if args.kind == "taesd":
            out = build_tiny_taesd(args.out, seed=args.seed)
        else:
            builder = build_tiny if args.kind == "lcm" else build_tiny_sd15
            out = builder(args.out, TinySpec(image_size=args.size, seed=args.seed))
        print(f"tiny {args.kind} model written to {out}")
        return 0
    if args.command in ("reference", "reference-score"):
        return _run_reference(args)
    if args.command == "train-decoder":
        return _train_decoder(args)
    if args.command == "tiny-lora":
        from model_build.tiny import build_tiny_lora

        print(f"tiny LoRA written to {build_tiny_lora(args.base, args.out, seed=args.seed)}")
        return 0
    if args.command == "encrypt":
        return _encrypt(args)
    if args.command == "verify":
        from lcm_fleet.artifact.manifest import read_manifest, verify_files

        manifest = read_manifest(args.artifact)
        verify_files(args.artifact, manifest)
        print(f"{args.artifact}: {len(manifest.files)} files match manifest {manifest.sha256}")
        return 0
    if args.command == "export":
        from model_build.build import export_artifact

        tome = _tome(args)
        _summary(
            export_artifact(
                args.source, args.out, revision=args.revision, overwrite=args.overwrite, tome=tome
            )
        )
        return 0
    if args.command == "quantize":
        from model_build.build import quantize_artifact

        result = quantize_artifact(
            args.ir,
            args.out,
            precision=args.precision,
            vae=_vae(args, model_folder_of(args.ir)),
            evaluation=_evaluation(args),
            spec=_spec(args),
            prompts=args.prompts,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        _summary(result)
        return 0
    if args.command == "build":
        from model_build.build import build_artifact

        source, record = args.source, None
        tome = _tome(args)
        if args.lora:
            from model_build.lora import fuse_lcm_lora

            fused = args.out.with_name(args.out.name + ".fused")
            record = fuse_lcm_lora(
                args.source,
                args.lora,
                fused,
                scale=args.lora_scale,
                revision=args.revision,
                weight_name=args.lora_weight_name,
                overwrite=args.overwrite,
            )
            source = str(fused)
        result = build_artifact(
            source,
            args.out,
            source_record=record,
            work_dir=args.work_dir,
            revision=args.revision,
            spec=_spec(args),
            prompts=args.prompts,
            precision=args.precision,
            vae=_vae(args, Path(args.source) if Path(args.source).is_dir() else None),
            evaluation=_evaluation(args),
            overwrite=args.overwrite,
            progress=not args.no_progress,
            tome=tome,
        )
        _summary(result)
        return 0
    raise AssertionError(args.command)


def _blocks(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as e:
        raise BuildInputError(
            f"--blocks {text!r} is not comma-separated whole numbers, e.g. 3,3,3,1"
        ) from e


def _train_decoder(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model_build.train_decoder import DecoderRecipe, train_decoder

    given = {
        "steps": args.steps,
        "seeds_per_prompt": args.seeds_per_prompt,
        "channels": args.channels,
        "blocks": _blocks(args.blocks),
    }
    recipe = replace(
        DecoderRecipe(seed=args.seed), **{k: v for k, v in given.items() if v is not None}
    )
    result = train_decoder(
        args.model,
        args.out,
        recipe,
        prompts=args.prompts,
        eval_prompts=args.eval_prompts,
        resume=args.resume,
        threads=args.threads,
        progress=not args.no_progress,
    )
    f = result.figures
    print(f"TAESD decoder written to {result.out_dir} ({result.weights_bytes} bytes of weights)")
    print(
        f"  decoder   {result.config['decoder_block_out_channels']} channels, blocks "
        f"{result.config['num_decoder_blocks']}, latent_channels {result.config['latent_channels']}"
    )
    print(
        f"  vs VAE    PSNR {f['psnr_db_mean']} dB (min {f['psnr_db_min']}), mean |diff| "
        f"{f['mean_abs_diff']} levels over {f['images']} evaluation renders"
    )
    if result.resumed_from:
        print(f"  resumed   at step {result.resumed_from}")
    for stage, seconds in result.durations_s.items():
        print(f"  {stage:<8}  {seconds:7.1f} s")
    return 0


def _run_reference(args: argparse.Namespace) -> int:
    import json

    from model_build.reference.evaluate import (
        EvalSettings,
        evaluate,
        load_captions,
        print_report,
        record_evaluation,
    )

    if args.command == "reference":
        from model_build.reference.train import Recipe, train_reference

        result = train_reference(
            args.out, Recipe(seed=args.seed), threads=args.threads, progress=not args.no_progress
        )
        print(f"reference LCM written to {result.out_dir}")
        for stage, seconds in result.durations_s.items():
            print(f"  {stage:<8} {seconds:7.1f} s")
        if not args.no_eval:
            settings = EvalSettings()
            report = evaluate(args.out, settings=settings)
            record_evaluation(args.out, report, settings)
            print_report(report, f"{args.out} (diffusers PyTorch fp32, 4 steps)")
        return 0
    if args.seeds < 1 or args.steps < 1:
        raise BuildInputError("--seeds and --steps must be at least 1")
    settings = EvalSettings(
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seeds=tuple(range(args.seeds)),
        precision=args.precision,
    )
    scenes = load_captions(args.captions) if args.captions else None
    report = evaluate(args.target, scenes, settings, sheet=args.sheet)
    print_report(report, str(args.target))
    if args.sheet:
        print(f"renders with captions: {args.sheet}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


# --- model registry in S3: publish, list ------------------------------------------------
# S3 settings come from LCM_* (lcm_fleet.settings.ConnectionSettings); see lcm_fleet/artifact/
# registry.py (names, layout, pull) and model_build/registry.py (publish, list).


def _registry_parsers(sub) -> None:
    p = sub.add_parser("publish", help="upload an artifact to S3 as a versioned model")
    p.add_argument("artifact", type=Path, help="artifact folder (with manifest.json)")
    p.add_argument("name", help="model name: [a-z0-9][a-z0-9._-]{0,63}")
    p.add_argument(
        "--alias", default="latest", help="alias to point at this version (default latest)"
    )
    p.add_argument("--no-alias", action="store_true", help="upload without moving any alias")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("list", help="list the model versions published in S3")
    p.add_argument("name", nargs="?", help="only this model")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _registry():
    from pydantic import ValidationError

    from lcm_fleet.artifact.registry import Registry
    from lcm_fleet.settings import ConnectionSettings

    try:
        settings = ConnectionSettings()
    except ValidationError as e:
        raise BuildInputError(f"invalid LCM_* S3 settings: {e}") from e
    if settings.s3_access_key_id is None or settings.s3_secret_access_key is None:
        raise BuildInputError(
            "set LCM_S3_ACCESS_KEY_ID and LCM_S3_SECRET_ACCESS_KEY (and LCM_S3_ENDPOINT_URL, "
            "LCM_S3_BUCKET, LCM_S3_PREFIX for your store) to publish or list models"
        )
    return Registry.from_settings(settings)


#: (manifest key, label) of the quality figures `lcm-build list` shows, in this order.
_QUALITY_FIGURES = (
    ("psnr_db", "PSNR {} dB"),
    ("psnr_db_min", "PSNR min {} dB"),
    ("ssim", "SSIM {}"),
    ("ssim_min", "SSIM min {}"),
    ("mean_abs_diff", "|diff| {}"),
    ("mean_abs_diff_mean", "|diff| {}"),
    ("adherence_pct", "adherence {}%"),
    ("adherence_drop_points", "adherence drop {} pts vs fp32"),
)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figures(section: dict | None, kind: str) -> str:
    """A short summary of a manifest's quality or speed section; '-' when it has none."""
    if not section:
        return "-"
    parts = []
    if kind == "quality":
        parts = [label.format(_number(section[k])) for k, label in _QUALITY_FIGURES if k in section]
        if "passed" in section:
            verdict = "passed" if section["passed"] else "FAILED"
            parts.append(verdict + (" (override)" if section.get("override") else ""))
    else:
        parts = [
            f"{key.removesuffix('_speedup')} x{_number(value)}"
            for key, value in section.items()
            if key.endswith("_speedup") and isinstance(value, (int, float))
        ]
    if not parts:  # another layout: its scalar figures as they are
        parts = [
            f"{key} {_number(value)}"
            for key, value in section.items()
            if isinstance(value, (str, int, float, bool))
        ]
    return ", ".join(parts) or "-"


def _run_registry(args: argparse.Namespace) -> int:
    import json

    from lcm_fleet.artifact.registry import validate_alias, validate_name
    from model_build.registry import list_versions, publish

    if args.command == "publish":
        validate_name(args.name)
        alias = None if args.no_alias else args.alias
        if alias is not None:
            validate_alias(alias)
        result = publish(
            _registry(), args.artifact, args.name, alias=alias, progress=not args.no_progress
        )
        print(f"published {result.ref}")
        print(f"  version   {result.version}")
        print(f"  uri       {result.uri}")
        print(
            f"  files     {result.files} ({result.bytes} bytes): {result.uploaded} uploaded, "
            f"{result.skipped} already there"
        )
        if result.alias_uri:
            print(f"  alias     {args.name}@{alias} -> {result.version} ({result.alias_uri})")
        return 0

    if args.name is not None:
        validate_name(args.name)
    registry = _registry()
    rows = list_versions(registry, args.name)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"no models published under {registry.uri()}")
        return 0
    table = [("NAME", "VERSION", "LATEST", "PRECISION", "SHAPE", "PUBLISHED", "QUALITY", "SPEED")]
    for r in rows:
        shape = r["shape"]
        table.append(
            (
                r["name"],
                r["version"] + ("" if r["intact"] else " (manifest changed!)"),
                "*" if r["latest"] else "",
                str(r["precision"] or "-"),
                f"{shape['width']}x{shape['height']}" if shape.get("width") else "-",
                r["published_at"] or "-",
                _figures(r["quality"], "quality"),
                _figures(r["speed"], "speed"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.verbose:
        # transformers and diffusers chatter about optional packages on import.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except (BuildError, LcmError) as e:
        code = exit_code(e)
        label = {2: "error", 3: "quality gate"}.get(code, "failed")
        print(f"lcm-build: {label}: {e}", file=sys.stderr)
        return code


def exit_code(error: BaseException) -> int:
    """2 for input the message says how to fix (the build's and the registry's), 3 for a
    candidate below the quality gate, 1 for any other failure."""
    if isinstance(error, (BuildInputError, RegistryInputError)):
        return 2
    if isinstance(error, QualityGateFailed):
        return 3
    return 1


if __name__ == "__main__":
    sys.exit(main())
