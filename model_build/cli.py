"""``lcm-build``: make the model artifacts that workers serve.

    lcm-build tiny OUT                 a tiny random LCM (diffusers folder), offline
    lcm-build export SOURCE OUT        diffusers folder or hub id -> fp32 OpenVINO IR artifact
    lcm-build quantize IR OUT          fp32 IR artifact -> INT8-UNet artifact (NNCF)
    lcm-build build SOURCE OUT         export + quantize (fp32 kept in OUT.fp32)
    lcm-build verify ARTIFACT          check every file against the manifest

Exit codes: 0 done, 2 bad input (the message says how to fix it), 1 the build failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from model_build.calibration import CalibrationSpec
from model_build.errors import BuildError, BuildInputError

logger = logging.getLogger("model_build")


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
    p.add_argument("--guidance-scale", type=float, default=8.0)
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

    p = sub.add_parser("export", help="export a diffusers LCM to an fp32 OpenVINO IR artifact")
    p.add_argument("source", help="diffusers folder or hub id (owner/name)")
    p.add_argument("out", type=Path)
    p.add_argument("--revision", default="main")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("quantize", help="quantize an fp32 IR artifact's UNet to INT8")
    p.add_argument("ir", type=Path)
    p.add_argument("out", type=Path)
    _calibration_args(p)

    p = sub.add_parser("build", help="export and quantize in one go")
    p.add_argument("source")
    p.add_argument("out", type=Path)
    p.add_argument("--revision", default="main")
    p.add_argument("--work-dir", type=Path, help="where the fp32 artifact goes (default OUT.fp32)")
    _calibration_args(p)

    p = sub.add_parser("verify", help="check an artifact's files against its manifest")
    p.add_argument("artifact", type=Path)
    return parser


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


def _summary(result) -> None:
    rows = {
        "artifact": str(result.artifact),
        "manifest sha256": result.manifest_sha256,
        "precision": result.precision,
        "shape": f"{result.shape['width']}x{result.shape['height']} batch {result.shape['batch']}",
    }
    if result.fake_quantize_count:
        rows["FakeQuantize ops"] = str(result.fake_quantize_count)
    if result.comparison is not None:
        c = result.comparison
        rows["vs fp32"] = (
            f"PSNR {c.psnr_db} dB (min {c.min_psnr_db}), "
            f"mean |diff| {c.mean_abs_diff} over {c.images} images"
        )
    for stage, seconds in result.durations_s.items():
        rows[f"{stage} s"] = f"{seconds:.1f}"
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key.ljust(width)}  {value}")


def run(args: argparse.Namespace) -> int:
    if args.command == "tiny":
        from model_build.tiny import TinySpec, build_tiny

        out = build_tiny(args.out, TinySpec(image_size=args.size, seed=args.seed))
        print(f"tiny LCM written to {out}")
        return 0
    if args.command == "verify":
        from model_build.manifest import read_manifest, verify_files

        manifest = read_manifest(args.artifact)
        verify_files(args.artifact, manifest)
        print(f"{args.artifact}: {len(manifest.files)} files match manifest {manifest.sha256}")
        return 0
    if args.command == "export":
        from model_build.build import export_artifact

        _summary(
            export_artifact(args.source, args.out, revision=args.revision, overwrite=args.overwrite)
        )
        return 0
    if args.command == "quantize":
        from model_build.build import quantize_artifact

        result = quantize_artifact(
            args.ir,
            args.out,
            spec=_spec(args),
            prompts=args.prompts,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        _summary(result)
        return 0
    if args.command == "build":
        from model_build.build import build_artifact

        result = build_artifact(
            args.source,
            args.out,
            work_dir=args.work_dir,
            revision=args.revision,
            spec=_spec(args),
            prompts=args.prompts,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        _summary(result)
        return 0
    raise AssertionError(args.command)


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
    except BuildInputError as e:
        print(f"lcm-build: error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"lcm-build: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
