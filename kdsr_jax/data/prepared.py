"""Prepared training data: an image folder decoded once into memory-mappable uint8 arrays.

Decoding a DIV2K-sized PNG (2040x1356) takes ~70 ms of one core, and every random 256 px
training crop of an uncached image pays a whole decode; DF2K (3,450 images) decodes to
~29 GB, far more than any per-process cache. `prepare()` (the CLI is
`scripts/prepare_data.py`) decodes the folder once, with the training reading rules of
`images.load_image` (gray replicated, alpha dropped, 16-bit rounded, EXIF orientation),
and `sources.PreparedSource` (`data.source='prepared'`, `data.path=DIR`) then crops
straight out of the memory-mapped files: a 256 px crop touches ~200 KB of the page
cache and costs well under a tenth of a millisecond (see README, "Preparing training
data").

Layout of a prepared dataset DIR::

    DIR/manifest.json             written LAST, atomically: its presence means complete
    DIR/arrays/<key>.npy          one uint8 (H, W, 3) array per image (standard .npy)

`<key>` hashes the image's relative path, byte size and modification time, so a re-run
reuses the arrays of unchanged files (resume after an interruption) and rebuilds the
others. Each array is written to a temporary file and renamed, so a half-written array
never has a final name; the manifest is removed before any array changes and written
after all of them, so a half-prepared dataset is never taken for a finished one.

The manifest (JSON) records the format version, the source folder and its fingerprint
(a hash of every image file's relative path, size and mtime), and per image in training
order (sorted relative paths, as `images.list_images`): name, array file, decoded shape,
header size `(h, w)` as probed without decoding, and the .npy data offset. Files whose
header cannot be read are listed under `skipped` (left out, as the folder source does);
files that pass the header check but fail to decode keep their place with an `error`
(the training source replaces them by the next good image, as the folder source does).
So the prepared source yields exactly the folder source's batches for the same seed.

Why not ArrayRecord shards read through grain (also JAX-ecosystem): a record is read
whole, so a 256 px crop of a 2040x1356 image copies its 8.3 MB (~4 ms per crop measured
here against ~0.07 ms from a memory map), and sub-image tiles would change which crops
training sees. The .npy format is numpy's own, needs no new dependency and can be
opened by any tool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import pathlib
import shutil
import signal
import threading
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from kdsr_jax import fileio
from kdsr_jax.data import images

logger = logging.getLogger(__name__)

FORMAT = "kdsr-jax-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAY_DIR = "arrays"
_TMP_MARK = ".tmp-"   # in the names of fileio.atomic_write's temporary files
PREPARE_HINT = "python scripts/prepare_data.py --input FOLDER --output DIR"


class PreparedDataError(ValueError):
    """A prepared dataset is missing, unfinished, damaged or stale (one-line message).

    `reason` is what is wrong, without the remedy the message adds."""

    def __init__(self, reason: str, remedy: str = ""):
        super().__init__(f"{reason}; {remedy}" if remedy else reason)
        self.reason = reason


# --------------------------------------------------------------------------- source folder


def list_source(folder, recursive: bool = True) -> list[tuple[str, str, int, int]]:
    """[(path, relative posix path, byte size, mtime_ns)] of the image files under
    `folder`, in training order (`images.list_images`)."""
    root = pathlib.Path(folder)
    out = []
    for path in images.list_images(folder, recursive=recursive):
        st = os.stat(path)
        out.append((path, pathlib.Path(path).relative_to(root).as_posix(), st.st_size,
                    st.st_mtime_ns))
    return out


def fingerprint(listing, recursive: bool) -> str:
    """sha256 over the reading options and each file's (relative path, size, mtime)."""
    h = hashlib.sha256(f"{FORMAT} v{FORMAT_VERSION} recursive={bool(recursive)}\n".encode())
    for _, rel, size, mtime in listing:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _array_key(rel: str, size: int, mtime: int) -> str:
    return hashlib.sha256(f"v{FORMAT_VERSION}\0{rel}\0{size}\0{mtime}".encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- arrays


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header; raises ValueError/OSError."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return shape, dtype, f.tell()


def _check_array(path: str) -> tuple[tuple[int, int, int], int] | None:
    """(shape, offset) of a complete uint8 (H, W, 3) .npy, or None if unusable."""
    try:
        shape, dtype, offset = _npy_header(path)
        ok = (dtype == np.uint8 and len(shape) == 3 and shape[2] == 3
              and os.path.getsize(path) == offset + int(np.prod(shape)))
    except (OSError, ValueError):
        return None
    return (tuple(int(s) for s in shape), offset) if ok else None


def _write_array(path: str, img: np.ndarray) -> None:
    """The image as an .npy file, written atomically (`fileio.atomic_write`)."""
    fileio.atomic_write(path, lambda f: np.lib.format.write_array(
        f, np.ascontiguousarray(img), allow_pickle=False))


def open_array(path: str, shape, offset: int) -> np.ndarray:
    """Read-only uint8 (H, W, 3) view of a prepared array, memory-mapped.

    Nothing is read until pixels are touched: a crop reads only its rows' pages. The
    mapping lives as long as the returned array (or a view of it), so cropping and
    copying leaves no mapped pages behind in the process. Raises `images.ImageError` if
    the file is missing or shorter than the manifest says.
    """
    height, width, channels = (int(s) for s in shape)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(buf, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            buf.madvise(mmap.MADV_RANDOM)  # no read-around on faults: see will_need
        return np.frombuffer(buf, np.uint8, count=height * width * channels,
                             offset=int(offset)).reshape(height, width, channels)
    except (OSError, ValueError) as exc:
        raise images.ImageError(f"{path}: cannot map prepared array "
                                f"({images._one_line(exc)})") from None


def will_need(view: np.ndarray) -> None:
    """Asks the kernel to read the file pages under `view` (a view of an `open_array`
    array, e.g. a flipped crop) ahead, in one request; a no-op for other arrays.

    A 256 px crop of a 2040 px wide image spans ~1.5 MB of whole rows. The maps of
    `open_array` are advised MADV_RANDOM, so a fault on a page that is not in the page
    cache reads that page alone instead of the kernel's read-ahead window around it
    (which can be the whole 8.3 MB file); this call makes the crop's span one read
    instead of one read per row. It matters when the prepared set is larger than the
    page cache (DF2K, ~29 GB). Measured on a 2-core VM (read-ahead 8 MB) for a 256 px
    crop of a 2040x1356 image evicted from the page cache: 1.8 ms and 1.5 MB read with
    this call, against 6-8 ms and 7.5 MB with the kernel's default advice (17 ms with
    MADV_RANDOM and no call); a crop in the cache costs ~0.2 ms either way.
    """
    span = mapped_span(view)
    if span is not None and hasattr(mmap, "MADV_WILLNEED"):
        mapping, first, end = span
        start = first - first % mmap.PAGESIZE  # madvise takes page-aligned starts
        mapping.madvise(mmap.MADV_WILLNEED, start, end - start)


def mapped_span(view: np.ndarray) -> tuple[mmap.mmap, int, int] | None:
    """(map, first byte, end byte) of the bytes of `view` within the memory map it is a
    view of (whatever its flips or transposes), or None if it is not a view of one."""
    owner = view.base
    while isinstance(owner, (np.ndarray, memoryview)):  # np.frombuffer keeps a memoryview
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    if not isinstance(owner, mmap.mmap) or view.size == 0:
        return None
    low = sum((n - 1) * st for n, st in zip(view.shape, view.strides) if st < 0)
    high = sum((n - 1) * st for n, st in zip(view.shape, view.strides) if st > 0)
    first = view.ctypes.data - np.frombuffer(owner, np.uint8, count=1).ctypes.data + low
    return owner, first, first + high - low + view.itemsize


# --------------------------------------------------------------------------- manifest


def _manifest_path(root) -> str:
    return os.path.join(os.fspath(root), MANIFEST)


def _write_manifest(root: str, manifest: dict[str, Any]) -> None:
    fileio.atomic_write_text(_manifest_path(root), json.dumps(manifest, indent=1) + "\n")
    _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(root) -> dict[str, Any]:
    """The manifest of a finished prepared dataset.

    Raises `PreparedDataError` naming the remedy if `root` is not a folder, has no
    manifest (never prepared, or preparation did not finish), or the manifest is
    unreadable or of another format version.
    """
    root = os.fspath(root)
    if not root:
        raise PreparedDataError("data.source='prepared' needs data.path (a folder written by "
                                f"{PREPARE_HINT})")
    if not os.path.isdir(root):
        raise PreparedDataError(f"{root}: not a folder", f"prepare one with {PREPARE_HINT}")
    path = _manifest_path(root)
    if not os.path.isfile(path):
        if os.path.isdir(os.path.join(root, ARRAY_DIR)):
            raise PreparedDataError(f"{root}: no {MANIFEST} (preparation did not finish)",
                                    f"run the same {PREPARE_HINT} again (it resumes)")
        if images.list_images(root, recursive=True):
            raise PreparedDataError(
                f"{root}: an image folder, not a prepared dataset (no {MANIFEST})",
                f"prepare it with python scripts/prepare_data.py --input {root} --output DIR "
                "and train with data.path=DIR, or train on it with data.source=folder")
        raise PreparedDataError(f"{root}: no {MANIFEST} (not a prepared dataset)",
                                f"prepare one with {PREPARE_HINT}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"{path}: unreadable ({images._one_line(exc)})",
                                f"re-run {PREPARE_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PreparedDataError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise PreparedDataError(f"{path}: format version {manifest.get('version')!r}, this "
                                f"kdsr_jax reads {FORMAT_VERSION}", f"re-run {PREPARE_HINT}")
    return manifest


def check_arrays(root, manifest: dict[str, Any]) -> None:
    """Every array the manifest lists exists with the size its shape implies (one stat
    per image); raises `PreparedDataError` with the count and the first bad file."""
    bad = []
    for entry in manifest["images"]:
        if "file" not in entry:
            continue
        path = os.path.join(os.fspath(root), entry["file"])
        want = int(entry["offset"]) + int(np.prod(entry["shape"]))
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        if size != want:
            bad.append(f"{entry['file']} ({'missing' if size is None else f'{size} bytes, want {want}'})")
    if bad:
        raise PreparedDataError(f"{root}: {len(bad)} prepared array(s) missing or damaged, "
                                f"e.g. {bad[0]}", f"re-run {PREPARE_HINT}")


def check_source(manifest: dict[str, Any], folder, recursive: bool = True,
                 root: str = "DIR") -> None:
    """Raises `PreparedDataError` if `folder` (listed recursively or not) no longer
    matches the manifest's source fingerprint: files added, removed or modified since
    preparation, another folder, or another `recursive` setting; the message says which."""
    now = fingerprint(list_source(folder, recursive), recursive)
    if now == manifest.get("source_fingerprint"):
        return
    made_from, made_recursive = manifest.get("source", "?"), manifest.get("recursive")
    remedy = (f"re-run python scripts/prepare_data.py --input {folder} --output {root}"
              f"{'' if recursive else ' --no-recursive'}, or unset data.folder to train on "
              "the prepared data as it is")
    if made_recursive is not None and bool(made_recursive) != bool(recursive):
        raise PreparedDataError(
            f"{root} was prepared {'' if made_recursive else 'non-'}recursively, but "
            f"data.recursive={bool(recursive)}",
            f"set data.recursive={bool(made_recursive)}, or {remedy}")
    if os.path.abspath(folder) != os.path.abspath(made_from):
        raise PreparedDataError(
            f"{root} was prepared from {made_from}, and data.folder={folder} holds other "
            "files", remedy)
    raise PreparedDataError(
        f"{root} was prepared from an earlier state of {folder} (files added, removed or "
        "modified since)", remedy)


# --------------------------------------------------------------------------- prepare


@dataclasses.dataclass
class PrepareResult:
    """What `prepare()` did: the manifest written and counts of this run's work."""

    manifest: dict[str, Any]
    decoded: int = 0        # images decoded and written in this run
    reused: int = 0         # arrays kept from an earlier (interrupted or older) run
    up_to_date: bool = False


def _prepare_one(task: tuple[str, str, str]) -> dict[str, Any]:
    """Worker: probe (as the folder source does), then reuse or decode + write one image.

    Returns {'probe': (h, w)} plus either 'skip' (header unreadable), 'error' (decode
    failed), or 'shape', 'offset', 'reused'."""
    path, rel, target = task
    try:
        probe = images.probe_image(path)
    except images.ImageError as exc:
        return {"skip": str(exc).removeprefix(f"{path}: ")}
    found = _check_array(target)
    if found is not None:
        return {"probe": probe, "shape": found[0], "offset": found[1], "reused": True}
    try:
        img = images.load_image(path)
    except images.ImageError as exc:
        return {"probe": probe, "error": str(exc).removeprefix(f"{path}: ")}
    _write_array(target, img)
    found = _check_array(target)
    if found is None:  # only if the disk lost the data under us
        raise OSError(f"{target}: written but unreadable")
    return {"probe": probe, "shape": found[0], "offset": found[1], "reused": False}


def _ignore_sigint() -> None:  # workers: the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_output(root: str, input_dir: str) -> None:
    if os.path.abspath(root) == os.path.abspath(input_dir):
        raise ValueError(f"--output {root} must differ from --input")
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"--output {root} exists and is not a folder")
    if os.path.isdir(root):
        entries = set(os.listdir(root)) - {MANIFEST, ARRAY_DIR}
        entries = {e for e in entries if not e.startswith(MANIFEST)}
        if entries:
            raise ValueError(f"--output {root} is not empty and not a prepared dataset "
                             f"(found {sorted(entries)[:3]}); choose a new folder")


def prepare(input_dir, output_dir, *, recursive: bool = True, workers: int | None = None,
            force: bool = False, progress: bool = True,
            log: Callable[[str], None] = logger.info) -> PrepareResult:
    """Decodes every image under `input_dir` into `output_dir` (layout: module docstring).

    Args:
      input_dir: image folder (searched recursively unless `recursive=False`).
      output_dir: new or previously prepared folder. An up-to-date dataset (same source
        fingerprint) is left as it is; otherwise arrays of unchanged files are reused,
        the rest decoded, stale arrays deleted, and the manifest written last.
      workers: decode processes (default: the CPUs this process may use); 1 decodes in
        this process.
      force: delete and rebuild every array.
      progress: tqdm bar on stderr.

    Raises ValueError (one line) for a bad input/output folder or when no image is
    usable; KeyboardInterrupt stops after the images in flight (re-run to resume).
    """
    input_dir, root = os.fspath(input_dir), os.fspath(output_dir)
    if not os.path.isdir(input_dir):
        raise ValueError(f"--input {input_dir}: not a folder")
    _check_output(root, input_dir)
    listing = list_source(input_dir, recursive)
    if not listing:
        raise ValueError(f"--input {input_dir}: no image files (extensions "
                         f"{', '.join(images.IMAGE_EXTENSIONS)})")
    source_fp = fingerprint(listing, recursive)
    array_dir = os.path.join(root, ARRAY_DIR)
    if not force and os.path.isfile(_manifest_path(root)):
        try:
            old = read_manifest(root)
            made_from = old.get("source")
            if made_from and os.path.abspath(made_from) != os.path.abspath(input_dir):
                raise ValueError(f"--output {root} holds the images of {made_from}, not of "
                                 f"--input {input_dir}; use another --output, or --force to "
                                 "replace them")
            if old.get("source_fingerprint") == source_fp:
                check_arrays(root, old)
                return PrepareResult(old, reused=old["num_images"], up_to_date=True)
        except PreparedDataError as exc:
            log(f"rebuilding {root} ({exc.reason}); arrays of unchanged files are kept")
    # From here on the arrays change: the dataset is unfinished until the new manifest.
    if os.path.exists(_manifest_path(root)):
        os.unlink(_manifest_path(root))
        _fsync_dir(root)
    if force and os.path.isdir(array_dir):
        shutil.rmtree(array_dir)
    os.makedirs(array_dir, exist_ok=True)

    targets = [f"{ARRAY_DIR}/{_array_key(rel, size, mtime)}.npy" for _, rel, size, mtime in listing]
    tasks = [(path, rel, os.path.join(root, t)) for (path, rel, _, _), t in zip(listing, targets)]
    results = _run_tasks(tasks, workers, progress)

    entries, skipped, decoded, reused = [], {}, 0, 0
    for (_, rel, _, _), target, res in zip(listing, targets, results):
        if "skip" in res:
            skipped[rel] = res["skip"]
            continue
        entry = {"name": rel, "probe": list(res["probe"])}
        if "error" in res:
            entry["error"] = res["error"]
        else:
            entry.update(file=target, shape=list(res["shape"]), offset=res["offset"])
            reused += res["reused"]
            decoded += not res["reused"]
        entries.append(entry)
    for name, reason in skipped.items():
        logger.warning("skipping image %s: %s", name, reason)
    for e in entries:
        if "error" in e:
            logger.warning("image %s fails to decode (%s): training replaces it by the next "
                           "image, as it would from the folder", e["name"], e["error"])
    _remove_stale(array_dir, {os.path.basename(e["file"]) for e in entries if "file" in e})
    good = [e for e in entries if "file" in e]
    if not good:
        raise ValueError(f"{input_dir}: no usable images ({len(skipped)} skipped, "
                         f"{len(entries)} failed to decode)")
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "source": os.path.abspath(input_dir), "recursive": bool(recursive),
        "source_fingerprint": source_fp,
        "num_images": len(good), "num_files": len(listing),
        "num_skipped": len(skipped), "num_failed": len(entries) - len(good),
        "total_bytes": int(sum(int(np.prod(e["shape"])) for e in good)),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": entries, "skipped": skipped,
    }
    _write_manifest(root, manifest)
    return PrepareResult(manifest, decoded=decoded, reused=reused)


def _run_tasks(tasks, workers: int | None, progress: bool) -> list[dict[str, Any]]:
    """Runs `_prepare_one` over `tasks` (in `workers` processes), results in task order."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(int(workers), len(tasks)))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), unit="img", desc="prepare", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers == 1:
            for i, task in enumerate(tasks):
                results[i] = _prepare_one(task)
                bar.update(1)
            return results
        # 'spawn': the parent may have imported JAX (threads), which fork does not survive.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                    initializer=_ignore_sigint) as pool:
            # Workers start while the tasks are submitted; they inherit an ignored SIGINT
            # (Ctrl-C reaches the whole process group: only this process handles it).
            with _sigint_ignored():
                futures = {pool.submit(_prepare_one, task): i for i, task in enumerate(tasks)}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # finish the images in flight
                raise
        return results
    finally:
        bar.close()


def _remove_stale(array_dir: str, keep: set[str]) -> None:
    """Deletes arrays no longer listed and temporary files of interrupted runs."""
    for name in os.listdir(array_dir):
        if name not in keep and (name.endswith(".npy") or _TMP_MARK in name):
            try:
                os.unlink(os.path.join(array_dir, name))
            except OSError:
                pass


def disk_bytes(paths) -> int:
    """Bytes of the given files (missing ones count 0)."""
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total
