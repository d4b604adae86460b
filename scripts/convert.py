#!/usr/bin/env python3
"""Convert official KDSR PyTorch checkpoints to kdsr-jax (orbax + model.json) and back.

    # official .pth/.pt (classic teacher/student, GAN {'params','params_ema'}, U-Net D)
    python scripts/convert.py --input KDSRsM_iso_x4.pt --output converted/KDSRsM_x4
    # converted directory -> .pth in the official layout (loads with strict=True)
    python scripts/convert.py --to-torch --input converted/KDSRsM_x4 --output KDSRsM_x4.pth

Flags:
  --input SOURCE     source: a weight file (.pth/.pt/.ckpt/.safetensors, read by
                     content), a registry name (--list-models), an http(s) URL or a
                     Google Drive link / gdrive:<id> (downloaded into the cache first);
                     with --to-torch: a converted directory.
  --list-models      list the official models --input accepts by name, and exit.
  --output PATH      destination: a directory (default mode) or a .pth file (--to-torch).
  --to-torch         export a converted directory back to the official .pth layout.
  --overwrite        replace an existing converted directory's weights.
  --dynconv IMPL     dynamic-conv formulation stored in model.json: auto|shift|grouped.
  --no-d-skip        discriminator only: the checkpoint was trained with
                     skip_connection=False (weights cannot tell).

Bad input (missing/truncated/non-checkpoint file, unsafe pickle, keys that do not match
a KDSR network) prints one line `error: ...` to stderr and exits with status 1.
The logic lives in `kdsr_jax.convert`; this file only parses flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from kdsr_jax import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Convert official KDSR PyTorch checkpoints to kdsr-jax and back.")
    p.add_argument("--input",
                   help="a weight file, registry name, URL or Drive link; or a converted "
                        "directory with --to-torch")
    p.add_argument("--output",
                   help="a directory to create, or a .pth path with --to-torch")
    p.add_argument("--list-models", action="store_true",
                   help="list the official models --input accepts by name, and exit")
    p.add_argument("--to-torch", action="store_true",
                   help="export a converted directory to an official-layout .pth")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the weights of an existing converted directory")
    p.add_argument("--dynconv", default="auto", choices=("auto", "shift", "grouped"),
                   help="dynamic-conv formulation recorded in model.json (default: auto)")
    p.add_argument("--no-d-skip", action="store_true",
                   help="discriminator trained with skip_connection=False")
    args = p.parse_args(argv)
    if not args.list_models and not (args.input and args.output):
        p.error("the following arguments are required: --input, --output")
    return args


def run(args: argparse.Namespace) -> str:
    from kdsr_jax import convert, hub
    from kdsr_jax.convert.mapping import describe

    if args.to_torch:
        model, variables = convert.load_converted(args.input)
        convert.to_torch(model.spec, variables, args.output)
        return f"wrote {describe(model.spec)} to {args.output}"
    overrides = {"dynconv": args.dynconv}
    if args.no_d_skip:
        overrides["d_skip_connection"] = False
    source = args.input
    if not os.path.exists(source) and hub.is_remote(source):
        source = hub.fetch(source)   # downloaded (or cached) weight file
    model, variables = convert.from_torch(source, **overrides)
    if args.no_d_skip and model.spec.kind != "discriminator":
        raise ValueError("--no-d-skip applies only to discriminator checkpoints")
    convert.save_converted(args.output, model.spec, variables, overwrite=args.overwrite)
    return f"converted {describe(model.spec)} to {args.output}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from kdsr_jax import hub

        print(hub.list_models())
        return 0
    return cli.run_cli(lambda: print(run(args)))


if __name__ == "__main__":
    sys.exit(main())
