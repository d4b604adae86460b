"""Host input pipeline: random HR patches, augmentation, each host's rows of the global batch (grain).

Reference: TRAINING.md §1.1 (classic: uniform random HR crop of `scale*patch_size`
= 256 px, then horizontal flip, vertical flip, transpose, each with p = 0.5, in that
order) and §2.1 (GAN: horizontal flip with p = 0.5, then reflect-101 pad of the
bottom/right edges up to 400 px if smaller, random 400x400 crop if larger).

Only HR patches are produced here; the LR images are synthesised on the device from
each batch (DEGRADATION.md), as in the official code.

Pipeline (grain `MapDataset`, so every element is a pure function of its position):

    step k -> global sample positions k*B + r for this host's rows r of the batch
      -> image index: all images, repeated forever, shuffled afresh each epoch
         (`EpochShuffle`, seeded by the run seed only)
      -> load image, crop, augment (rng seeded from (seed, global position))
      -> {'hr': (len(rows), P, P, 3)}; batches from `start_step` on
      -> worker threads (or processes) preparing `prefetch_batches` batches ahead

The global batch of step k is therefore the same images, crops and flips whatever the
number of processes and devices: P processes each read their rows of it (`rows`,
default the contiguous block of `process_index`), instead of a host-specific shard of
the image list. Because every batch is determined by its step, a run resumes from the
step alone: `create_train_iterator(..., start_step=k)` yields exactly the batches an
uninterrupted run yields from step k, whatever the worker threads / processes or the
process count before and after.

Checkpointing: `get_state()` returns a small JSON-serialisable dict (the step and what
defines the batches: source kind, image count, seed, batch, patch, augment, crop); save it
with e.g. `orbax.checkpoint.args.JsonSave` (one file for all hosts). `set_state(state)`
continues from its step and refuses a state written by a differently configured pipeline;
the loader settings (threads, processes, prefetch), the process count and the data
folder's location are not part of it.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import grain
import jax
import numpy as np

from kdsr_jax.data import prepared, sources

logger = logging.getLogger(__name__)

AUGMENTS = ("dihedral", "hflip", "none")
CROPS = ("random", "pad_or_crop")
SMALL_IMAGE_POLICIES = ("skip", "pad")
# TRAINING.md §2.1: the GAN GT images are padded / cropped to 400x400.
GAN_GT_SIZE = 400
# TRAINING.md §1.1: each flip / transpose is applied with probability 0.5.
AUGMENT_PROB = 0.5
_STATE_VERSION = 2    # 1: grain iterator state of host-sharded image lists


def pad_bottom_right(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-101 pads the bottom and right edges (dcb|abcd|cba) up to `size` px."""
    pad_h, pad_w = max(size - img.shape[0], 0), max(size - img.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return img
    return np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")  # numpy 'reflect' = reflect-101


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly placed `size` x `size` window of an image at least that large (a view)."""
    height, width = img.shape[:2]
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the {size} px crop")
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return img[top:top + size, left:left + size]


def augment_image(img: np.ndarray, augment: str, rng: np.random.Generator) -> np.ndarray:
    """'dihedral': hflip, vflip, transpose each with p=0.5 in that order (§1.1);
    'hflip': horizontal flip with p=0.5 (§2.1); 'none'. Returns a view."""
    if augment == "none":
        return img
    if augment == "hflip":
        return img[:, ::-1] if rng.random() < AUGMENT_PROB else img
    if augment == "dihedral":
        hflip, vflip, transpose = (rng.random(3) < AUGMENT_PROB).tolist()
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if transpose:
            img = img.transpose(1, 0, 2)
        return img
    raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTS}")


def contiguous_pixels(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C-contiguous copy of a (possibly flipped / transposed) view of an (H, W, C) image,
    written into `out` (same shape and dtype) when given.

    A view whose rows are runs of whole pixels (a crop, a vertical flip) is copied row by
    row. Otherwise (a horizontal flip or a transpose) numpy would move one C-byte pixel
    at a time; copying one channel plane at a time is ~2-3x faster for 3-channel uint8
    (measured in the `data` benchmark). Values are identical either way.
    """
    if out is None:
        out = np.empty(img.shape, img.dtype)
    pixel_runs = img.ndim != 3 or (img.strides[2] == img.itemsize
                                   and img.strides[1] == img.itemsize * img.shape[2])
    if pixel_runs:
        np.copyto(out, img)
    else:
        for c in range(img.shape[2]):
            out[..., c] = img[..., c]
    return out


class EpochShuffle:
    """Infinite sequence of `indices`, freshly permuted each epoch (seeded by epoch).

    Position i -> indices[perm_e[i % n]] with e = i // n. (grain's own `shuffle` walks
    cycles and costs ~15 ms per element on datasets of a few images.)
    """

    def __init__(self, indices: np.ndarray, seed: int):
        self.indices = np.asarray(indices, np.int64)
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"indices": self.indices, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["indices"], state["seed"])

    def __len__(self) -> int:
        return sys.maxsize

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
                if len(self._perms) >= 4:  # workers are at most a few epochs apart
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = perm
            return perm

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self.indices))
        return int(self.indices[self._permutation(epoch)[offset]])


class _MakePatch:
    """grain random_map transform: source index -> {'hr': uint8 (P, P, 3)}."""

    def __init__(self, source, patch_size: int, augment: str, crop: str, small_images: str):
        self.source, self.patch_size, self.augment = source, patch_size, augment
        self.crop, self.small_images = crop, small_images
        self._padded: set[str] = set()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _note_padding(self, index: int, shape) -> None:
        name = self.source.name(index)
        with self._lock:
            if name in self._padded:
                return
            self._padded.add(name)
        log = logger.info if self.crop == "pad_or_crop" else logger.warning
        log("image %s (%dx%d) is smaller than the %d px patch: reflect-padded",
            name, shape[0], shape[1], self.patch_size)

    def __call__(self, index, rng: np.random.Generator,
                 out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{'hr': the (P, P, 3) uint8 patch}, written into `out` when given."""
        img = self.source[int(index)]
        size = self.patch_size
        # Crops and flips are views: pixels are read by the padding or the final copy
        # (for a memory-mapped prepared image, `prepared.will_need` reads them ahead).
        if self.crop == "pad_or_crop":  # §2.1 order: flip, then pad / crop
            img = augment_image(img, self.augment, rng)
            if min(img.shape[:2]) < size:
                self._note_padding(int(index), img.shape)
                prepared.will_need(img)
                img = pad_bottom_right(img, size)
            patch = random_crop(img, size, rng)
        else:  # §1.1 order: crop, then flip / transpose
            if min(img.shape[:2]) < size:  # only reachable with small_images='pad'
                self._note_padding(int(index), img.shape)
                prepared.will_need(img)
                img = pad_bottom_right(img, size)
            patch = augment_image(random_crop(img, size, rng), self.augment, rng)
        prepared.will_need(patch)
        return {"hr": contiguous_pixels(patch, out)}


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed
    (grain then raises UnparsedFlagAccessError). Mark them parsed so defaults apply;
    an absl app parses argv as usual later."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def host_rows(batch_size: int, process_index: int, process_count: int) -> list[int]:
    """The contiguous block of rows of a `batch_size` global batch that process
    `process_index` of `process_count` reads (rows [p*B/P, (p+1)*B/P))."""
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"global batch size {batch_size} is not a positive multiple of the "
                         f"process count {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    local = batch_size // process_count
    return list(range(process_index * local, (process_index + 1) * local))


class _Steps:
    """grain source: position k -> step k (an endless sequence)."""

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step: int) -> int:
        return int(step)


class _HostRowsOfBatch:
    """grain map transform: step k -> {'hr': uint8 (len(rows), P, P, 3)}, the rows `rows`
    of the global batch of step k. Sample k*B + r is a pure function of that global
    position: image `order[k*B + r]`, crop/flip rng seeded from (sample_seed, k*B + r)."""

    def __init__(self, order: EpochShuffle, make_patch: _MakePatch, batch_size: int,
                 rows, sample_seed: int):
        self.order, self.make_patch = order, make_patch
        self.batch_size, self.rows = int(batch_size), [int(r) for r in rows]
        self.sample_seed = int(sample_seed)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        size = self.make_patch.patch_size
        batch = np.empty((len(self.rows), size, size, 3), np.uint8)
        for i, row in enumerate(self.rows):  # each patch is written into its batch row
            position = int(step) * self.batch_size + row
            rng = np.random.default_rng([self.sample_seed, position])
            self.make_patch(self.order[position], rng, out=batch[i])
        return {"hr": batch}


class TrainIterator:
    """Iterator of {'hr': uint8 (local_batch, P, P, 3)} with `get_state()/set_state()`.

    Attributes: `source` (its `skipped` dict counts bad images), `local_batch`, `rows`
    (this host's rows of the global batch), `step` (index of the next batch).
    """

    def __init__(self, build, source, fingerprint: dict[str, Any], rows, step: int):
        self._build = build  # start_step -> grain.IterDataset of batches
        self._iterator = iter(build(step))
        self.source = source
        self.rows = list(rows)
        self.local_batch = len(self.rows)
        self._fingerprint = fingerprint
        self.step = step

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.step += 1
        return batch

    def close(self) -> None:
        """Stops prefetch threads / worker processes (also done at garbage collection)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next step and what defines the batches (the
        same on every host; no loader settings, no process layout)."""
        return {"version": _STATE_VERSION, "step": self.step, "config": dict(self._fingerprint)}

    def check_state(self, state: dict[str, Any]) -> int:
        """The step of a `get_state()` result; ValueError if it is from an older format or
        a pipeline that makes other batches (naming the differing settings)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} is not "
                             f"{_STATE_VERSION}")
        saved = state.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"data iterator state is from a different pipeline ({details})")
        return int(state["step"])

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a `get_state()` result of a pipeline making the same batches
        (any loader settings, any process count)."""
        step = self.check_state(state)
        if step != self.step:
            self.close()
            self._iterator = iter(self._build(step))
            self.step = step


def create_train_iterator(data_cfg, *, batch_size: int, patch_size: int, augment: str = "dihedral",
                          seed: int = 0, start_step: int = 0, process_index: int | None = None,
                          process_count: int | None = None, rows=None) -> TrainIterator:
    """Infinite, deterministic, checkpointable iterator of HR training patches.

    Args:
      data_cfg: `sources.default_data_config()`-style ConfigDict (source + pipeline
        options `crop`, `small_images`, `worker_threads`, `worker_processes`,
        `prefetch_batches`).
      batch_size: GLOBAL batch B; each host yields its `rows` of it.
      patch_size: HR patch side in pixels (classic 256 = 4*64; GAN 400 with
        `crop='pad_or_crop'`).
      augment: 'dihedral' (classic), 'hflip' (GAN) or 'none'.
      seed: all randomness (shuffle, crops, flips) derives from it and the sample's
        global position (step * B + row) only.
      start_step: first batch index (batches before it are skipped without decoding).
      process_index, process_count: default `jax.process_index()/process_count()`; the
        host reads rows [p*B/P, (p+1)*B/P) (`host_rows`).
      rows: explicit rows of the global batch this host reads, in order (e.g.
        `kdsr_jax.train.sharding.host_batch_rows`); overrides process_index/count.

    Raises:
      ValueError: unknown augment / crop / small_images, patch_size <= 0, start_step < 0,
        a batch not divisible by the process count, rows outside [0, B), no usable image.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTS}")
    crop = data_cfg.get("crop", "random")
    if crop not in CROPS:
        raise ValueError(f"unknown data.crop {crop!r}; expected one of {CROPS}")
    small = data_cfg.get("small_images", "skip")
    if small not in SMALL_IMAGE_POLICIES:
        raise ValueError(f"unknown data.small_images {small!r}; expected one of {SMALL_IMAGE_POLICIES}")
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if rows is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        rows = host_rows(batch_size, process_index, process_count)
    rows = [int(r) for r in rows]
    if batch_size <= 0 or not rows or any(not 0 <= r < batch_size for r in rows):
        raise ValueError(f"rows {rows} are not a non-empty subset of the {batch_size} rows "
                         "of the global batch")

    skip_small = crop == "random" and small == "skip"
    source = sources.make_source(data_cfg, min_size=patch_size if skip_small else None)
    shuffle_seed, sample_seed = (int(s) for s in
                                 np.random.SeedSequence([seed]).generate_state(2))

    order = EpochShuffle(np.arange(len(source)), shuffle_seed)
    make_patch = _MakePatch(source, patch_size, augment, crop, small)
    # One work item = this host's rows of one step's batch, so threads and worker
    # processes (which round-robin over work items) give the same batches.
    ds = grain.MapDataset.source(_Steps()).map(
        _HostRowsOfBatch(order, make_patch, batch_size, rows, sample_seed))

    threads = max(int(data_cfg.get("worker_threads", 2)), 0)
    prefetch = max(int(data_cfg.get("prefetch_batches", 2)), 0)
    # grain runs at most `prefetch_buffer_size` threads at once: ahead by at least one
    # batch per thread, so that every thread asked for works.
    read_options = grain.ReadOptions(num_threads=threads,
                                     prefetch_buffer_size=max(prefetch, threads) if threads else 0)
    processes = int(data_cfg.get("worker_processes", 0))
    if processes > 0:
        _ensure_absl_flags_parsed()

    def build(first_step: int) -> grain.IterDataset:
        it_ds = ds[first_step:].to_iter_dataset(read_options)
        if processes > 0:
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes))
        return it_ds

    # A prepared folder yields the folder's batches: a run may switch between the two.
    kind = data_cfg.get("source", "bundled")
    fingerprint = {"source": "folder" if kind == "prepared" else kind, "num_images": len(source),
                   "seed": int(seed), "batch_size": int(batch_size),
                   "patch_size": int(patch_size), "augment": augment, "crop": crop,
                   "small_images": small}
    return TrainIterator(build, source, fingerprint, rows, start_step)
