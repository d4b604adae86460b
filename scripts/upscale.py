#!/usr/bin/env python
"""Upscale images with a KDSR student (blind SR: the degradation is estimated from
the image itself). Tiled inference from kdsr_jax/evaluate/tiling.py: the IDR is computed
once for the whole image, then the generator runs per tile.

  python scripts/upscale.py --checkpoint KDSR-GANV2-x4 -i photo.jpg -o out/
  python scripts/upscale.py --checkpoint KDSRsM_iso_x4.pt -i photo.jpg -o out/
  python scripts/upscale.py --list-models
  python scripts/upscale.py --checkpoint WORKDIR -i folder/ -o out/ --tile 256 --tile-pad 16

* png / jpg / webp (and bmp / tif) in, PNG out (`<OUTDIR>/<name>_out.png`: the
  suffix, `--suffix`, defaults to `_out` as in Real-ESRGAN), written atomically
  (temporary file + rename: an interrupted run never leaves a partial PNG under the
  final name).
* Nothing is overwritten silently: an output that would replace an input file is
  always refused (even with --overwrite), as are two inputs that map to one output
  (a.png and a.jpg with the same suffix); existing outputs are replaced only with
  --overwrite. All of this is checked before the first image is processed.
* Gray inputs are upscaled as RGB (3 equal channels in) and written as RGB.
* RGBA: colour through the network, alpha upscaled separately with the MATLAB-like
  bicubic (DEGRADATION.md §1.5 upscaling path) and re-attached.
* 16-bit inputs: the network sees full precision, the output is a 16-bit PNG.
* --tile N: LR tile side (0 = whole image; default: automatic from free memory, see
  `tiling.auto_tile_size`); --tile-pad P: context on each tile side. With
  P >= 2 * n_blocks + 4 (the generator's receptive radius) tiling is exact. A tiled
  image shows a per-tile progress bar.
Errors (missing/corrupt input, empty folder, teacher checkpoint, unwritable output)
print one `error: ...` line each. Over a folder, an image that cannot be read or
upscaled is named with its reason and skipped, the rest are written, and a last line
says how many were skipped; the exit status is 0 while any image was upscaled.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kdsr_jax import cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint",
                   help="student weights: a registry name (see --list-models), an http(s) "
                        "URL, a Google Drive link or gdrive:<id>, a training workdir, a "
                        "converted dir, or a weight file (.pth/.pt/.ckpt/.safetensors)")
    p.add_argument("--list-models", action="store_true",
                   help="list the official models --checkpoint accepts by name, and exit")
    p.add_argument("-i", "--input", help="image file or folder")
    p.add_argument("-o", "--output", help="output folder")
    p.add_argument("--tile", type=int, default=None,
                   help="LR tile side in px (0: no tiling; default: automatic)")
    p.add_argument("--tile-pad", type=int, default=16, help="context px per tile side")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--suffix", default="_out",
                   help="appended to output file names (default: _out; e.g. _x4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never an input file)")
    args = p.parse_args(argv)
    if not args.list_models:
        missing = [f for f, v in (("--checkpoint", args.checkpoint), ("-i/--input", args.input),
                                  ("-o/--output", args.output)) if not v]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _quantizer(bits: int):
    maxval, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)

    def q(x):
        return np.floor(np.clip(x, 0.0, 1.0) * maxval + 0.5).astype(dtype)

    return q


# zlib level of 8-bit outputs: 1 is faster than the default 6 on large SR outputs, for
# larger files; 16-bit outputs keep the default.
PNG8_COMPRESS_LEVEL = 1


def write_png_atomic(path: str, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Quantised uint8 or uint16 RGB (H, W, 3) (+ alpha (H, W)) -> 8- or 16-bit PNG at
    `path`, through `images.save_png` (temporary file + rename; usual umask mode)."""
    from kdsr_jax.data import images

    bits = 16 if rgb.dtype == np.uint16 else 8
    images.save_png(path, rgb, alpha, bit_depth=bits,
                    compress_level=PNG8_COMPRESS_LEVEL if bits == 8 else 6)


def upscale_file(runner, src: str, dst: str, tile, tile_pad: int,
                 progress=None) -> tuple[int, int]:
    from kdsr_jax.data import images
    from kdsr_jax.evaluate import protocol

    rgb, alpha, bits = images.load_image_full(src)
    q = _quantizer(bits)
    out = runner.upscale(rgb, tile=tile, tile_pad=tile_pad, quantize=q, progress=progress)
    a = None
    if alpha is not None:
        a = q(protocol.bicubic_upscale(alpha[..., None], runner.scale))[..., 0]
    write_png_atomic(dst, out, a)
    return out.shape[:2]


def _inputs(path: str) -> list[str]:
    from kdsr_jax.data import images

    if os.path.isdir(path):
        files = images.list_images(path, recursive=False)
        if not files:
            raise ValueError(f"{path}: no images (png/jpg/webp/bmp/tif) in this folder")
        return files
    if not os.path.exists(path):
        raise ValueError(f"input not found: {path}")
    return [path]


def _check_output(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {folder}: "
                         f"{exc.strerror or exc}") from None


def plan_outputs(files: list[str], folder: str, suffix: str, overwrite: bool) -> list[str]:
    """Output path of each input; raises ValueError when an output would replace an
    input, when two inputs share an output, or (without `overwrite`) when an output
    exists."""
    from kdsr_jax import fileio

    dsts = [os.path.join(folder, f"{os.path.splitext(os.path.basename(src))[0]}{suffix}.png")
            for src in files]
    inputs = {os.path.realpath(src): src for src in files}
    seen: dict[str, str] = {}
    for src, dst in zip(files, dsts):
        real = os.path.realpath(dst)
        if real in inputs:
            raise ValueError(f"the output {dst} would replace the input {inputs[real]}; "
                             "choose another -o folder or --suffix")
        if real in seen:
            raise ValueError(f"{seen[real]} and {src} would both be written to {dst}; "
                             "upscale them separately or rename one")
        seen[real] = src
    fileio.refuse_existing(dsts, overwrite)
    return dsts


def _tile_bar(name: str):
    """progress(done, total) for one image: a tqdm bar of its tiles (only when tiled)."""
    from tqdm import tqdm

    state = {}

    def update(done: int, total: int) -> None:
        if total < 2:
            return
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=name, unit="tile", leave=False,
                                      file=sys.stderr)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return update


def run(args) -> int:
    import jax.numpy as jnp
    from tqdm import tqdm

    from kdsr_jax import checkpoints
    from kdsr_jax.evaluate import tiling

    files = _inputs(args.input)
    dsts = plan_outputs(files, args.output, args.suffix, args.overwrite)
    _check_output(args.output)
    if args.tile is not None and args.tile != 0 and args.tile < 16:
        raise ValueError("--tile must be 0 (no tiling) or >= 16")
    if args.tile_pad < 0:
        raise ValueError("--tile-pad must be >= 0")
    model, variables = checkpoints.load(args.checkpoint)
    if model.spec.kind == "teacher":
        raise tiling.TeacherNeedsHRError(
            f"{args.checkpoint} is a KDSR teacher, which needs the HR image; "
            "upscaling needs a student checkpoint")
    if model.spec.kind != "student":
        raise ValueError(f"{args.checkpoint}: a {model.spec.kind}, not an SR student")
    dtype = jnp.dtype(args.dtype)
    runner = tiling.Runner(model, variables, dtype)
    tile = tiling.auto_tile_size(model.spec, dtype) if args.tile is None else args.tile
    done, skipped = 0, []
    for src, dst in tqdm(list(zip(files, dsts)), desc="upscale", unit="img", file=sys.stderr,
                         disable=len(files) < 2):
        try:
            upscale_file(runner, src, dst, tile, args.tile_pad,
                         progress=_tile_bar(os.path.basename(src)))
            done += 1
        except (ValueError, OSError) as exc:
            # Keep going: name the file and its reason, then the next image.
            line = cli.error_line(exc)
            skipped.append(src)
            tqdm.write(f"error: {line if src in line else f'{src}: {line}'}", file=sys.stderr)
    if len(files) > 1 or skipped:
        print(f"upscaled {done} of {len(files)} image(s) into {args.output}"
              + (f"; skipped {len(skipped)} (reasons above)" if skipped else ""))
    return 0 if done else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from kdsr_jax import hub

        print(hub.list_models())
        return 0
    return cli.run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
