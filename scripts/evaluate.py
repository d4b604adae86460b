#!/usr/bin/env python
"""Benchmark a KDSR student (or a teacher, given the HR) with the paper's protocols
(reference/EVALUATION.md; implementation in kdsr_jax/evaluate/protocol.py).

  python scripts/evaluate.py --checkpoint KDSRs-M-iso-x4 --data benchmark/ \
      --protocol iso --datasets Set5,Set14 --output results/iso
  python scripts/evaluate.py --checkpoint WORKDIR --data benchmark/ --protocol aniso \
      --lambda1 3.5 --lambda2 1.5 --theta 30 --noise 10 --datasets Set14
  python scripts/evaluate.py --checkpoint KDSRS-GAN.pth --protocol paired \
      --lr NTIRE2020/track1-valid-input --gt NTIRE2020/track1-valid-gt

Prints one row per method (Bicubic, KDSR) with 'PSNR / SSIM' per dataset and writes
<output>.json (means + per-image values) and <output>.csv (means). `--save-images DIR`
writes every SR image as an 8-bit PNG, as the official testers and BasicSR do:
DIR/<dataset>/<degradation>/<name>.png (iso/aniso), DIR/<name>/<name>.png (paired).
Existing outputs are replaced only with --overwrite; an input is never replaced.
Numbers are checked first (e.g. --max-images must be >= 0; 0 = all images).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdsr_jax import cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint",
                   help="a registry name (see --list-models), an http(s) URL, a Google "
                        "Drive link or gdrive:<id>, a training workdir, a converted dir, "
                        "or a weight file (.pth/.pt/.ckpt/.safetensors)")
    p.add_argument("--list-models", action="store_true",
                   help="list the official models --checkpoint accepts by name, and exit")
    p.add_argument("--protocol", choices=("iso", "aniso", "paired"), default="iso")
    p.add_argument("--data", help="root with <name>/HR/*.png folders (iso/aniso)")
    p.add_argument("--datasets", default="",
                   help="comma-separated dataset names (default: all subfolders)")
    p.add_argument("--lambda1", type=float, default=3.5)
    p.add_argument("--lambda2", type=float, default=1.5)
    p.add_argument("--theta", type=float, default=30.0, help="degrees")
    p.add_argument("--noise", type=float, default=None,
                   help="noise level in 0-255 units (aniso default 10, iso 0)")
    p.add_argument("--lr", help="paired: LR folder")
    p.add_argument("--gt", help="paired: GT folder")
    p.add_argument("--name", default="paired", help="paired: dataset name in the table")
    p.add_argument("--output", default="", help="stem for <output>.json and .csv")
    p.add_argument("--bucket", type=int, default=32,
                   help="LR canvas sides are rounded up to this multiple (compile reuse)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-images", type=int, default=0,
                   help="first N images per dataset (default 0: all)")
    p.add_argument("--save-images", metavar="DIR", default="",
                   help="write the SR images as PNGs under DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --output files and --save-images PNGs")
    p.add_argument("--no-bicubic", action="store_true", help="skip the Bicubic row")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = p.parse_args(argv)
    if not args.list_models and not args.checkpoint:
        p.error("the following arguments are required: --checkpoint")
    return args


def run(args) -> int:
    import jax.numpy as jnp
    from tqdm import tqdm

    from kdsr_jax import checkpoints, fileio
    from kdsr_jax.data import images
    from kdsr_jax.evaluate import protocol, tiling

    cli.check_numbers(args, {"bucket": (">=", 1), "batch_size": (">=", 1),
                             "max_images": (">=", 0), "lambda1": (">", 0),
                             "lambda2": (">", 0), "theta": ("finite", 0),
                             "noise": (">=", 0)})
    if args.output:
        fileio.refuse_existing(list(protocol.output_paths(args.output)), args.overwrite)
    model, variables = checkpoints.load(args.checkpoint)
    if model.spec.kind == "discriminator":
        raise ValueError(f"{args.checkpoint}: a discriminator, not an SR model")
    runner = tiling.Runner(model, variables, jnp.dtype(args.dtype))
    scale = runner.scale
    if args.protocol == "paired":
        if not (args.lr and args.gt):
            raise ValueError("--protocol paired needs --lr DIR and --gt DIR")
        lr_files = images.list_images(args.lr, False) if os.path.isdir(args.lr) else []
        saver = _image_saver(args, [(args.name, lr_files, None)], lr_files)
        with tqdm(total=len(lr_files), desc="images", unit="img", file=sys.stderr) as bar:
            result = protocol.evaluate_paired(runner, args.lr, args.gt, name=args.name,
                                              bucket=args.bucket, batch_size=args.batch_size,
                                              progress=bar.update,
                                              with_bicubic=not args.no_bicubic, on_sr=saver)
    else:
        if not args.data:
            raise ValueError(f"--protocol {args.protocol} needs --data ROOT")
        names = [n for n in args.datasets.split(",") if n]
        datasets = protocol.discover_datasets(args.data, names or None)
        if args.protocol == "iso":
            degs = protocol.iso_degradations(scale)
            if args.noise:
                degs = [protocol.Degradation("iso_gaussian", sig=d.sig, noise=args.noise)
                        for d in degs]
        else:
            noise = protocol.ANISO_DEFAULT["noise"] if args.noise is None else args.noise
            degs = [protocol.aniso_degradation(args.lambda1, args.lambda2, args.theta, noise)]
        total = sum(min(len(p), args.max_images or len(p)) for _, p in datasets) * len(degs)
        used = [(n, p[:args.max_images] if args.max_images else p) for n, p in datasets]
        saver = _image_saver(args, [(n, p, d) for n, p in used for d in degs],
                             [f for _, p in used for f in p])
        with tqdm(total=total, desc="images", unit="img", file=sys.stderr) as bar:
            result = protocol.evaluate_synthetic(runner, datasets, degs, bucket=args.bucket,
                                                 batch_size=args.batch_size,
                                                 max_images=args.max_images,
                                                 progress=bar.update,
                                                 with_bicubic=not args.no_bicubic,
                                                 on_sr=saver)
    ckpt = (os.path.abspath(args.checkpoint) if os.path.exists(args.checkpoint)
            else args.checkpoint)   # a registry name / URL stays as given
    result.update(checkpoint=ckpt, protocol=args.protocol,
                  scale=scale, model=model.spec.to_dict(), dtype=args.dtype)
    print(f"x{scale} {args.protocol} ({'; '.join(result['degradations'][:1])}"
          f"{' ...' if len(result['degradations']) > 1 else ''}) — {result['metrics']}")
    print(protocol.format_table(result))
    if args.output:
        for path in protocol.write_outputs(result, args.output):
            print(f"wrote {path}")
    if args.save_images:
        print(f"wrote the SR images under {args.save_images}")
    return 0


def image_path(folder: str, dataset: str, src: str, degradation) -> str:
    """--save-images layout: <folder>/<dataset>[/<degradation>]/<stem>.png."""
    parts = [folder, dataset]
    if degradation is not None:
        parts.append(re.sub(r"[^A-Za-z0-9.]+", "_", degradation.label).strip("_"))
    return os.path.join(*parts, os.path.splitext(os.path.basename(src))[0] + ".png")


def _image_saver(args, groups, inputs):
    """on_sr callback writing 8-bit PNGs (atomically) for --save-images, or None.
    Every planned path is checked first: none may be an input, and existing ones need
    --overwrite."""
    if not args.save_images:
        return None
    import numpy as np

    from kdsr_jax import fileio
    from kdsr_jax.data import images

    planned = [image_path(args.save_images, name, f, deg)
               for name, files, deg in groups for f in files]
    real_inputs = {os.path.realpath(f) for f in inputs}
    for path in planned:
        if os.path.realpath(path) in real_inputs:
            raise ValueError(f"--save-images: {path} would replace an input image; "
                             "choose another folder")
    fileio.refuse_existing(planned, args.overwrite)

    def save(dataset, src, degradation, sr):
        path = image_path(args.save_images, dataset, src, degradation)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        images.save_png(path, np.floor(np.clip(sr, 0, 1) * 255 + 0.5).astype(np.uint8))

    return save


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from kdsr_jax import hub

        print(hub.list_models())
        return 0
    return cli.run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
