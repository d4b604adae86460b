"""The `data` benchmark section: HR training patches per second from each source.

Self-contained (no import of the rest of the benchmark); `scripts/benchmark.py
--sections data` runs it. Nothing is downloaded: it writes `num_images` DIV2K-sized
PNGs (2040x1356, bundled scikit-image photos resized, plus a little Gaussian noise so
the files compress like photographs, ~4 MB each), prepares them with
`kdsr_jax.data.prepared.prepare`, and times `pipeline.create_train_iterator` at the
official batch (64 HR patches of 256 px with the dihedral augmentation, TRAINING.md
§1.1; and the GAN stage's 400 px pad-or-crop with the horizontal flip, §2.1) for:

* ``folder uncached``: `data.source='folder'`, `cache_mb=0`: every crop decodes a PNG;
* ``folder cached``: the default 1 GB cache holding every image (after a warm-up pass);
  with DF2K (~29 GB decoded) the cache almost never hits, so this is a best case;
* ``tfds layout``: the TFDS route (`data.source='tfds'`): an ArrayRecord file of the
  same PNG bytes, read and decoded per example as `tfds.data_source` does
  (`tensorflow_datasets` is not needed: its opener is replaced by an ArrayRecord reader);
* ``prepared``: `data.source='prepared'` (memory-mapped uint8 arrays).

Each with 1 and 2 worker threads, and 2 worker processes where it applies. The figure is
the wall time of `batches` batches after `warmup` (throughput with prefetching), as ms
per batch and patches/s, and the CPU time per batch of the process and its workers
(user + system; a figure that other jobs on a shared machine disturb much less).
`prepared_images` > `num_images` additionally times a larger prepared set made of copies
of the prepared arrays (distinct files, e.g. 3450 for a DF2K-sized set of ~29 GB), with
the share of it that was in the page cache when each row began (Linux `mincore`): a set
larger than the machine's memory cannot be all cached, and its misses read the disk.
"""

from __future__ import annotations

import dataclasses
import ctypes
import gc
import mmap
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable
from unittest import mock

import numpy as np
from PIL import Image

try:  # CPU time of grain's worker processes (optional: without it, '-' in the table)
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

from kdsr_jax.data import pipeline, prepared, samples, sources

DIV2K_SIZE = (1356, 2040)            # (H, W) of a typical DIV2K HR image
OFFICIAL_BATCH, OFFICIAL_PATCH = 64, 256   # TRAINING.md §1.1: 64 x (4 * 64) px HR patches
GAN_PATCH = pipeline.GAN_GT_SIZE     # §2.1: 400 px
GOAL_MS = 30.0                       # issue goal: 64 x 256 px in <= 30 ms on 2 cores
NOISE_SIGMA = 2.0                    # gives ~4 MB PNGs, about DIV2K's average


@dataclasses.dataclass
class DataBenchConfig:
    num_images: int = 16
    image_size: tuple[int, int] = DIV2K_SIZE   # (H, W) of the generated images
    prepared_images: int = 0         # > num_images: also time a larger prepared set
    workdir: str = ""                # '' = a temporary folder, deleted afterwards
    batch: int = OFFICIAL_BATCH
    patch: int = OFFICIAL_PATCH
    gan_patch: int = GAN_PATCH
    workers: tuple[str, ...] = ("1t", "2t", "2p")   # N threads ('Nt') / processes ('Np')
    sources: tuple[str, ...] = ("folder_uncached", "folder_cached", "tfds_layout", "prepared")
    batches: int = 4
    warmup: int = 2
    prepare_workers: int | None = None   # None = all CPUs this process may use
    seed: int = 0

    def validate(self) -> None:
        bad = sorted(set(self.sources) - {"folder_uncached", "folder_cached", "tfds_layout",
                                          "prepared"})
        if bad:
            raise ValueError(f"unknown data source(s) {bad}")
        for w in self.workers:
            if len(w) < 2 or w[-1] not in "tp" or not w[:-1].isdigit() or int(w[:-1]) < 1:
                raise ValueError(f"data workers {w!r}: expected N threads 'Nt' or processes 'Np'")
        for name in ("num_images", "batch", "patch", "gan_patch", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"data {name} must be >= 1, got {getattr(self, name)}")


def make_images(folder: str, n: int, size: tuple[int, int] = DIV2K_SIZE,
                log: Callable[[str], None] = print) -> list[str]:
    """Writes `n` PNG photos `img_0000.png`... of `size` (H, W) (kept if already there)."""
    os.makedirs(folder, exist_ok=True)
    photos = [img for _, img in samples.bundled_images("all")]
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i:04d}.png")
        paths.append(path)
        if os.path.isfile(path):
            continue
        base = Image.fromarray(photos[i % len(photos)]).resize(tuple(size[::-1]), Image.BICUBIC)
        img = np.asarray(base, np.float32)
        if (i // len(photos)) % 2:
            img = img[:, ::-1]
        img = img + np.random.default_rng(i).normal(0.0, NOISE_SIGMA, img.shape).astype(np.float32)
        img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        tmp = path + ".tmp"
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, path)
        log(f"  wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return paths


def copy_prepared(src: str, dst: str, n: int, log: Callable[[str], None] = print) -> list[str]:
    """A prepared dataset of `n` images made of copies of `src`'s arrays (repeated in
    turn), with its own manifest: a large prepared set without `n` decodes. The copies
    are distinct files, so the set takes its full size on disk and in the page cache (a
    DF2K-sized set: 3,450 images, ~29 GB). Kept for re-runs. Returns the array paths."""
    manifest = prepared.read_manifest(src)
    entries = [e for e in manifest["images"] if "file" in e]
    os.makedirs(os.path.join(dst, prepared.ARRAY_DIR), exist_ok=True)
    images, paths = [], []
    for i in range(n):
        e = dict(entries[i % len(entries)])
        target = f"{prepared.ARRAY_DIR}/copy_{i:05d}.npy"
        path = os.path.join(dst, target)
        if not os.path.exists(path):
            shutil.copyfile(os.path.join(src, e["file"]), path + ".tmp")
            os.replace(path + ".tmp", path)
            if (i + 1) % max(n // 10, 1) == 0:
                log(f"  copied {i + 1} of {n} arrays to {dst}")
        images.append({**e, "name": f"copy_{i:05d}", "file": target})
        paths.append(path)
    out = {**manifest, "source": f"{src} copied", "source_fingerprint": f"copies-{n}",
           "num_images": n, "num_files": n, "num_skipped": 0, "num_failed": 0,
           "total_bytes": int(sum(int(np.prod(e["shape"])) for e in images)),
           "images": images, "skipped": {}}
    prepared._write_manifest(dst, out)  # pylint: disable=protected-access
    return paths


def warm_page_cache(paths: list[str]) -> None:
    """Reads the files once, so that the page cache holds them (if it can)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 23):
                pass


def resident_pages(path: str) -> np.ndarray | None:
    """Indices of the file's pages that are in the page cache (Linux `mincore`); None
    where it cannot be asked. Touches no page."""
    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    size = os.path.getsize(path)
    if not size:
        return np.zeros(0, np.int64)
    vec = np.zeros(-(-size // mmap.PAGESIZE), np.uint8)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapped, np.uint8)
    try:
        failed = mincore(view.ctypes.data, size, vec.ctypes.data) != 0
    finally:
        del view
        mapped.close()
    return None if failed else np.flatnonzero(vec & 1)


def page_cache_fraction(paths: list[str]) -> float | None:
    """Fraction of the files' pages in the page cache (Linux `mincore`); None elsewhere."""
    total = resident = 0
    for path in paths:
        pages = resident_pages(path)
        if pages is None:
            return None
        total += -(-os.path.getsize(path) // mmap.PAGESIZE)
        resident += len(pages)
    return resident / total if total else None


def memory_bytes() -> int | None:
    """Physical memory of this machine (bytes), where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class _ArrayRecordTfds:
    """`tfds.data_source`-like: len + getitem -> {'image': encoded PNG bytes}."""

    def __init__(self, path: str):
        from array_record.python import array_record_data_source  # optional dependency

        self._ds = array_record_data_source.ArrayRecordDataSource(path)

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, i):
        return {"image": self._ds[i]}


def _write_array_record(path: str, files: list[str]) -> None:
    from array_record.python import array_record_module  # optional dependency

    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for f in files:
        with open(f, "rb") as fh:
            writer.write(fh.read())
    writer.close()


def _time_iterator(data_cfg, cfg: DataBenchConfig, patch: int, augment: str) -> dict[str, Any]:
    threads_before = set(threading.enumerate())
    it = pipeline.create_train_iterator(data_cfg, batch_size=cfg.batch, patch_size=patch,
                                        augment=augment, seed=cfg.seed)
    try:
        for _ in range(cfg.warmup):
            next(it)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        for _ in range(cfg.batches):
            batch = next(it)["hr"]
        seconds = (time.perf_counter() - t0) / cfg.batches
        c1 = _cpu_seconds()
    finally:
        it.close()
        del it
        _wait_for_threads(threads_before)
    assert batch.shape == (cfg.batch, patch, patch, 3)
    cpu = None if c0 is None or c1 is None else 1e3 * (c1 - c0) / cfg.batches
    return {"ms_per_batch": 1e3 * seconds, "patches_per_s": cfg.batch / seconds,
            "cpu_ms_per_batch": cpu}


# Threads of a `multiprocessing.pool` (grain keeps one for its worker processes and
# reuses it for every later iterator): they outlive an iterator by design.
_POOL_THREAD_TARGETS = ("(worker)", "(_handle_workers)", "(_handle_tasks)", "(_handle_results)")


def _wait_for_threads(before: set, timeout_s: float = 60.0) -> None:
    """Waits until the prefetch threads of a closed iterator are gone: a thread still
    decoding its last batch would otherwise slow (and bill its CPU to) the next row.
    Threads of a long-lived process pool are not waited for."""
    gc.collect()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()
               and not t.name.endswith(_POOL_THREAD_TARGETS)]
        if not new:
            return
        time.sleep(0.05)


def _cpu_seconds() -> float | None:
    """CPU seconds (user + system) of this process's threads and its live children."""
    if psutil is None:
        return None
    procs = [psutil.Process()]
    try:
        procs += procs[0].children(recursive=True)
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except psutil.Error:
        return None


def _pipeline_cfg(workers: str, **fields):
    cfg = sources.default_data_config()
    n = int(workers[:-1])
    if workers.endswith("p"):
        cfg.worker_threads, cfg.worker_processes = 1, n
    else:
        cfg.worker_threads, cfg.worker_processes = n, 0
    cfg.update(fields)
    return cfg


def run(cfg: DataBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generates, prepares and times (see module docstring); returns a JSON-able report
    {'config', 'sizes', 'results'}."""
    cfg.validate()
    own_dir = not cfg.workdir
    work = tempfile.mkdtemp(prefix="kdsr_data_bench_") if own_dir else cfg.workdir
    try:
        return _run(cfg, work, log)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def _run(cfg: DataBenchConfig, work: str, log) -> dict[str, Any]:
    folder, ready = os.path.join(work, "png"), os.path.join(work, "prepared")
    log(f"benchmark data: {cfg.num_images} PNGs of {cfg.image_size[0]}x{cfg.image_size[1]} "
        f"in {folder} ...")
    files = make_images(folder, cfg.num_images, cfg.image_size, log)
    t0 = time.perf_counter()
    prep = prepared.prepare(folder, ready, workers=cfg.prepare_workers, progress=False, log=log)
    prep_s = time.perf_counter() - t0
    m = prep.manifest
    png_bytes = prepared.disk_bytes(files)
    sizes = {"images": m["num_images"], "png_bytes": png_bytes,
             "prepared_bytes": prepared.disk_bytes(
                 os.path.join(ready, e["file"]) for e in m["images"] if "file" in e),
             "prepare_s": None if prep.up_to_date else prep_s,
             "prepare_workers": cfg.prepare_workers or (
                 len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count())}
    sizes["prepared_over_png"] = sizes["prepared_bytes"] / max(png_bytes, 1)

    runs = []  # (source label, crop label, data-cfg fields, patch, augment, workers)
    classic = ("random", cfg.patch, "dihedral")
    gan = ("pad_or_crop", cfg.gan_patch, "hflip")
    if "folder_uncached" in cfg.sources:
        runs += [("folder uncached", classic, dict(source="folder", folder=folder, cache_mb=0))]
    if "folder_cached" in cfg.sources:
        runs += [("folder cached", classic, dict(source="folder", folder=folder))]
    if "tfds_layout" in cfg.sources:
        record = os.path.join(work, "div2k_like.array_record")
        if not os.path.exists(record):
            _write_array_record(record, files)
        runs += [("tfds layout", classic, dict(source="tfds", tfds_name="div2k-like",
                                               cache_mb=0, _record=record))]
    if "prepared" in cfg.sources:
        small = [os.path.join(ready, e["file"]) for e in m["images"] if "file" in e]
        label = f"prepared ({m['num_images']} images)"
        runs += [(label, classic, dict(source="prepared", path=ready, _paths=small, _warm=True)),
                 (label, gan, dict(source="prepared", path=ready, _paths=small, _warm=True))]
        if cfg.prepared_images > cfg.num_images:
            big = os.path.join(work, f"prepared_x{cfg.prepared_images}")
            log(f"  a prepared set of {cfg.prepared_images} images in {big} ...")
            big_paths = copy_prepared(ready, big, cfg.prepared_images, log)
            sizes["large_set_images"] = cfg.prepared_images
            sizes["large_set_bytes"] = prepared.disk_bytes(big_paths)
            label = f"prepared ({cfg.prepared_images} images)"
            runs += [(label, classic, dict(source="prepared", path=big, _paths=big_paths)),
                     (label, gan, dict(source="prepared", path=big, _paths=big_paths))]
    sizes["memory_bytes"] = memory_bytes()

    results = []
    for label, (crop, patch, augment), fields in runs:
        record = fields.pop("_record", None)
        cached_paths = fields.pop("_paths", None)
        warm = fields.pop("_warm", False)
        for workers in cfg.workers:
            if record and workers.endswith("p"):
                continue  # the replaced TFDS opener does not reach worker processes
            row = dict(source=label, crop=crop, patch=patch, batch=cfg.batch, workers=workers)
            if warm:  # the goal's condition: the (small) prepared set in the page cache
                warm_page_cache(cached_paths)
            if cached_paths:
                row["page_cache_before"] = page_cache_fraction(cached_paths)
            log(f"  {label}, {crop} {patch} px, {workers} ...")
            data_cfg = _pipeline_cfg(workers, crop=crop, **fields)
            if record:  # the TFDS route without tensorflow_datasets: same bytes, same decode
                with mock.patch.object(sources, "_open_tfds",
                                       lambda *_, r=record: _ArrayRecordTfds(r)):
                    row.update(_time_iterator(data_cfg, cfg, patch, augment))
            else:
                row.update(_time_iterator(data_cfg, cfg, patch, augment))
            results.append(row)
    return {"config": dataclasses.asdict(cfg), "sizes": sizes, "results": results,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def format_table(report: dict[str, Any]) -> str:
    """Text table: one row per (source, crop, workers)."""
    head = ("source", "crop", "batch x px", "workers", "ms/batch", "patches/s", "CPU ms/batch",
            "in page cache")
    pct = lambda x: "-" if x is None else f"{100 * x:.0f} %"
    rows = [(r["source"], r["crop"], f"{r['batch']} x {r['patch']}", r["workers"],
             f"{r['ms_per_batch']:.1f}", f"{r['patches_per_s']:.0f}",
             "-" if r.get("cpu_ms_per_batch") is None else f"{r['cpu_ms_per_batch']:.1f}",
             pct(r.get("page_cache_before")))
            for r in report["results"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
           for row in [head, tuple("-" * w for w in widths), *rows]]
    s = report["sizes"]
    h, w = report["config"]["image_size"]
    out.append(f"{s['images']} images of {h}x{w}: PNG {s['png_bytes'] / 1e6:.0f} MB, prepared "
               f"{s['prepared_bytes'] / 1e6:.0f} MB ({s['prepared_over_png']:.2f}x the PNGs)"
               + (f"; prepared in {s['prepare_s']:.1f} s with {s['prepare_workers']} processes"
                  if s["prepare_s"] is not None else ""))
    if s.get("large_set_images"):
        ram = s.get("memory_bytes")
        out.append(f"Large set: {s['large_set_images']} prepared images, "
                   f"{_size(s['large_set_bytes'])} on disk"
                   + (f", machine memory {_size(ram)}" if ram else "") + ".")
    out.append("'in page cache': the prepared set's share in the page cache when the row "
               "began (the small set is read once before each of its rows; the large set "
               "is not: one larger than memory cannot be all cached).")
    load, cpus = report["load_avg_1min"], os.cpu_count() or 1
    out.append("Workers: Nt = N threads, Np = N processes (grain). Goal: 64 x 256 px in "
               f"<= {GOAL_MS:.0f} ms on 2 cores (prepared, page cache warm). CPU time is "
               "counted in clock ticks (10 ms): time more batches (--data-batches) for a "
               "finer figure."
               + ("" if load is None else f" 1-min load average at the end: {load:.2f} on "
                  f"{cpus} CPUs" + (": above the CPU count, so wall times are inflated by "
                                    "other jobs." if load > cpus else ".")))
    return "\n".join(out)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
