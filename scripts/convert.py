#!/usr/bin/env python3
"""Convert official KDSR PyTorch checkpoints to kdsr-jax (orbax + model.json) and back.

    # official .pth/.pt (classic teacher/student, GAN {'params','params_ema'}, U-Net D)
    python scripts/convert.py --input KDSRsM_iso_x4.pt --output converted/KDSRsM_x4
    # converted directory or training workdir -> .pth in the official layout
    # (loads with strict=True; a workdir exports its EMA weights when it keeps an EMA)
    python scripts/convert.py --to-torch --input converted/KDSRsM_x4 --output KDSRsM_x4.pth
    python scripts/convert.py --to-torch --input runs/student --output student.pth

Flags:
  --input SOURCE     source: a weight file (.pth/.pt/.ckpt/.safetensors, read by
                     content), a registry name (--list-models), an http(s) URL or a
                     Google Drive link / gdrive:<id> (downloaded into the cache first);
                     with --to-torch: a converted directory or a training workdir
                     (scripts/train.py --workdir).
  --list-models      list the official models --input accepts by name, and exit.
  --output PATH      destination: a directory (default mode) or a .pth file (--to-torch).
  --to-torch         export to the official .pth layout (zip-deflate compressed).
  --overwrite        replace an existing output. The new output is written next to it
                     and swapped in only when complete: a failure keeps the old one.
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
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input",
                   help="a weight file, registry name, URL or Drive link; or a converted "
                        "directory or training workdir with --to-torch")
    p.add_argument("--output",
                   help="a directory to create, or a .pth path with --to-torch")
    p.add_argument("--list-models", action="store_true",
                   help="list the official models --input accepts by name, and exit")
    p.add_argument("--to-torch", action="store_true",
                   help="export a converted directory or a training workdir to an "
                        "official-layout .pth")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (atomically: the old one stays if "
                        "anything fails)")
    p.add_argument("--dynconv", default="auto", choices=("auto", "shift", "grouped"),
                   help="dynamic-conv formulation recorded in model.json (default: auto)")
    p.add_argument("--no-d-skip", action="store_true",
                   help="discriminator trained with skip_connection=False")
    args = p.parse_args(argv)
    if not args.list_models and not (args.input and args.output):
        p.error("the following arguments are required: --input, --output")
    return args


def run(args: argparse.Namespace) -> str:
    from kdsr_jax import checkpoints, convert, fileio, hub
    from kdsr_jax.convert.mapping import describe

    if (os.path.exists(args.input) and os.path.exists(args.output)
            and os.path.samefile(args.input, args.output)):
        raise ValueError(f"--output {args.output} is the --input itself; choose another output")
    fileio.refuse_existing([args.output], args.overwrite)
    if args.to_torch:
        if not os.path.isdir(args.input):
            raise ValueError(f"--to-torch needs a converted directory or a training workdir, "
                             f"not {args.input}")
        model, variables = checkpoints.load(args.input)   # workdir: EMA weights if any
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
