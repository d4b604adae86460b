"""Host input pipeline: random HR patches, augmentation, per-host batches (grain).

Reference: TRAINING.md §1.1 (classic: uniform random HR crop of `scale*patch_size`
= 256 px, then horizontal flip, vertical flip, transpose, each with p = 0.5, in that
order) and §2.1 (GAN: horizontal flip with p = 0.5, then reflect-101 pad of the
bottom/right edges up to 400 px if smaller, random 400x400 crop if larger).

Only HR patches are produced here; the LR images are synthesised on the device from
each batch (DEGRADATION.md), as in the official code.

Pipeline (grain `MapDataset`, so every element is a pure function of its position):

    indices of this host's shard (`process_index::process_count`)
      -> repeated forever, shuffled afresh each epoch (`EpochShuffle`)
      -> random_map: load image, crop, augment   (rng seeded from seed + position)
      -> batches of `local_batch` -> skip `start_step` batches
      -> worker threads (or processes) preparing `prefetch_batches` batches ahead

Because every sample depends only on (seed, host, position), a run restored with
`set_state(get_state())` -- or started with `start_step=k` -- yields exactly the batches
an uninterrupted run yields from the same step.

Checkpointing: `get_state()` returns a JSON-serialisable dict (save it with e.g.
`orbax.checkpoint.args.JsonSave`, one file per host); `set_state(state)` restores it
and refuses a state written by a differently configured pipeline (source kind, image
count, seed, batch, patch, augment, crop, host); the data folder itself may move.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import grain
import jax
import numpy as np

from kdsr_jax.data import sources

logger = logging.getLogger(__name__)

AUGMENTS = ("dihedral", "hflip", "none")
CROPS = ("random", "pad_or_crop")
SMALL_IMAGE_POLICIES = ("skip", "pad")
# TRAINING.md §2.1: the GAN GT images are padded / cropped to 400x400.
GAN_GT_SIZE = 400
# TRAINING.md §1.1: each flip / transpose is applied with probability 0.5.
AUGMENT_PROB = 0.5
_STATE_VERSION = 1


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


def contiguous_pixels(img: np.ndarray) -> np.ndarray:
    """C-contiguous copy of a (possibly flipped / transposed) view of an (H, W, C) uint8
    image. The copy moves whole C-byte pixels (a void-dtype view) rather than single
    bytes: ~2x faster for flipped or transposed patches (measured in the `data`
    benchmark), identical values."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.strides[-1] != 1:
        return np.ascontiguousarray(img)
    return np.ascontiguousarray(img.view(f"V{img.shape[-1]}")).view(np.uint8)


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

    def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        img = self.source[int(index)]
        size = self.patch_size
        if self.crop == "pad_or_crop":  # §2.1 order: flip, then pad / crop
            img = augment_image(img, self.augment, rng)
            if min(img.shape[:2]) < size:
                self._note_padding(int(index), img.shape)
                img = pad_bottom_right(img, size)
            patch = random_crop(img, size, rng)
        else:  # §1.1 order: crop, then flip / transpose
            if min(img.shape[:2]) < size:  # only reachable with small_images='pad'
                self._note_padding(int(index), img.shape)
                img = pad_bottom_right(img, size)
            patch = augment_image(random_crop(img, size, rng), self.augment, rng)
        return {"hr": contiguous_pixels(patch)}


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed
    (grain then raises UnparsedFlagAccessError). Mark them parsed so defaults apply;
    an absl app parses argv as usual later."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"global batch size {batch_size} is not a positive multiple of the "
                         f"process count {process_count}")
    return batch_size // process_count


class TrainIterator:
    """Iterator of {'hr': uint8 (local_batch, P, P, 3)} with `get_state()/set_state()`.

    Attributes: `source` (its `skipped` dict counts bad images), `local_batch`,
    `step` (index of the next batch).
    """

    def __init__(self, build, source, fingerprint: dict[str, Any], step: int):
        self._build = build  # start_step -> grain.IterDataset of batches
        self._iterator = iter(build(step))
        self.source = source
        self.local_batch = fingerprint["local_batch"]
        self._fingerprint = fingerprint
        self._start_step = step
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
        """JSON-serialisable position of the iterator (per host)."""
        return {"version": _STATE_VERSION, "step": self.step, "start_step": self._start_step,
                "config": dict(self._fingerprint), "grain": self._iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a `get_state()` result of an identically configured pipeline."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} is not "
                             f"{_STATE_VERSION}")
        saved = state.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"data iterator state is from a different pipeline ({details})")
        start_step = int(state["start_step"])
        if start_step != self._start_step:  # grain positions count from that step
            self._iterator = iter(self._build(start_step))
            self._start_step = start_step
        self._iterator.set_state(state["grain"])
        self.step = int(state["step"])


def create_train_iterator(data_cfg, *, batch_size: int, patch_size: int, augment: str = "dihedral",
                          seed: int = 0, start_step: int = 0, process_index: int | None = None,
                          process_count: int | None = None) -> TrainIterator:
    """Infinite, deterministic, checkpointable iterator of HR training patches.

    Args:
      data_cfg: `sources.default_data_config()`-style ConfigDict (source + pipeline
        options `crop`, `small_images`, `worker_threads`, `worker_processes`,
        `prefetch_batches`).
      batch_size: GLOBAL batch; each host yields `batch_size // process_count`.
      patch_size: HR patch side in pixels (classic 256 = 4*64; GAN 400 with
        `crop='pad_or_crop'`).
      augment: 'dihedral' (classic), 'hflip' (GAN) or 'none'.
      seed: all randomness (shuffle, crops, flips) derives from it and the host index.
      start_step: first batch index (batches before it are skipped without decoding).
      process_index, process_count: default `jax.process_index()/process_count()`.
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
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local_batch = _local_batch(batch_size, process_count)

    skip_small = crop == "random" and small == "skip"
    source = sources.make_source(data_cfg, min_size=patch_size if skip_small else None)
    if len(source) < process_count:
        raise ValueError(f"{source.describe()} has {len(source)} images, fewer than the "
                         f"{process_count} hosts it is sharded over")
    shuffle_seed, map_seed = (int(s) for s in
                              np.random.SeedSequence([seed, process_index]).generate_state(2))

    shard = np.arange(len(source))[process_index::process_count]
    ds = grain.MapDataset.source(EpochShuffle(shard, shuffle_seed))
    ds = ds.random_map(_MakePatch(source, patch_size, augment, crop, small), seed=map_seed)
    # Batching before the workers: one work item = one batch, so threads and worker
    # processes (which round-robin over work items) give the same batches.
    ds = ds.batch(local_batch, drop_remainder=True)

    threads = max(int(data_cfg.get("worker_threads", 2)), 0)
    prefetch = max(int(data_cfg.get("prefetch_batches", 2)), 0)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch if threads else 0)
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
                   "seed": int(seed),
                   "batch_size": int(batch_size), "local_batch": local_batch,
                   "patch_size": int(patch_size), "augment": augment, "crop": crop,
                   "small_images": small, "process_index": int(process_index),
                   "process_count": int(process_count)}
    return TrainIterator(build, source, fingerprint, start_step)
