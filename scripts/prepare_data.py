#!/usr/bin/env python
"""Prepare an image folder for fast training: decode every image once into uint8 arrays
that training memory-maps (no image decoding while training).

  python scripts/prepare_data.py --input /data/DF2K_HR --output data/df2k
  python scripts/train.py --config configs/teacher.py --workdir runs/T \\
      --config.data.source=prepared --config.data.path=data/df2k

* Same reading rules as training from the folder (`kdsr_jax.data.images.load_image`):
  searched recursively, gray replicated to RGB, alpha dropped, 16-bit rounded to 8 bits,
  EXIF orientation applied. Unusable files are skipped, counted and listed in the
  manifest; training then sees exactly the batches the folder source gives.
* Parallel over the CPUs (`--workers`), with a progress bar.
* Interrupt it at any time (Ctrl-C, a killed job) and run the same command again: the
  arrays already written are reused, the rest decoded. `manifest.json` is written last
  and atomically, so an unfinished dataset is never taken for a finished one; a re-run
  on an up-to-date dataset does nothing; changed source files are redone. An --output
  prepared from another --input is refused unless --force (which replaces it).
* Disk: 3 bytes per pixel (DIV2K/DF2K PNGs are ~2x smaller; see README, "Preparing
  training data"). A set larger than the page cache still trains at full speed with
  two or more worker threads (a crop that misses the cache reads only its rows).
* Manifest counts: `num_images` usable images; `num_skipped` files whose header cannot
  be read (left out, as training from the folder does); `num_failed` files that decode
  badly past a good header (kept in `images` with an `error`: training replaces them by
  the next image, as from the folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdsr_jax.data import prepared  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--input", required=True, help="image folder (e.g. DF2K HR PNGs)")
    p.add_argument("--output", required=True,
                   help="prepared dataset folder (new, or one this script wrote before)")
    p.add_argument("--no-recursive", action="store_true",
                   help="only the files directly in --input (match data.recursive=False)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode processes (default: all CPUs this process may use)")
    p.add_argument("--force", action="store_true",
                   help="rebuild every array from scratch (also: replace a dataset that was "
                        "prepared from another --input)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", force=True)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        result = prepared.prepare(args.input, args.output, recursive=not args.no_recursive,
                                  workers=args.workers, force=args.force,
                                  progress=not args.quiet, log=print)
    except KeyboardInterrupt:
        print(f"interrupted: {args.output} is unfinished (no manifest); run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    m = result.manifest
    source_bytes = prepared.disk_bytes(os.path.join(m["source"], e["name"]) for e in m["images"])
    state = ("already up to date" if result.up_to_date else
             f"{result.decoded} decoded, {result.reused} reused")
    print(f"{args.output}: {m['num_images']} image{'s' * (m['num_images'] != 1)} ({state}), {_gb(m['total_bytes'])} of "
          f"arrays from {_gb(source_bytes)} of image files; {m['num_skipped']} skipped, "
          f"{m['num_failed']} failed to decode (see {prepared.MANIFEST})")
    print(f"train with: --config.data.source=prepared --config.data.path={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
