"""HR image sources: an image folder, a prepared folder, a TFDS dataset, or the bundled photos.

Reference: TRAINING.md §1.1 (classic: DF2K HR PNGs, sorted by filename, uint8 RGB,
grayscale replicated) and §2.1 (GAN: DF2K+OST GT pool read as 3-channel colour).

A source is a random-access sequence of uint8 (H, W, 3) RGB arrays (`len(src)`,
`src[i]`, `src.name(i)`). Bad items never stop a run:

* folder sources check every file's header when built (empty, not an image, truncated
  PNG, smaller than `min_size`) and leave those out;
* anything that only fails when decoded (e.g. a JPEG truncated inside its pixel data)
  or turns out too small (TFDS items, whose sizes are unknown up front) is marked bad
  at first access and replaced by the next good item (index + 1, + 2, ... wrapping
  around). The replacement depends only on the files, so it is deterministic and a
  resumed run sees the same data.

Each skipped item is logged with ONE warning and counted in `src.skipped` (name ->
reason). With worker processes each process keeps its own count.

Memory: decoded images are kept in an LRU cache of `cache_mb` megabytes (per process).
The bundled photos (~5 MB) and small folders fit entirely. DF2K decodes to roughly 30 GB
of uint8, so with the default budget most accesses decode the PNG again (~70 ms for a
2040x1356 PNG on an idle core; every random crop pays a whole decode). For such data,
prepare it once (`scripts/prepare_data.py`, module `prepared`) and train with
`data.source='prepared'`: `PreparedSource` memory-maps uint8 arrays, caches nothing, and
gives the folder source's batches.
"""

from __future__ import annotations

import logging
import threading

import cachetools
import ml_collections
import numpy as np

from kdsr_jax.data import images, prepared, samples

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "prepared", "tfds", "bundled")
DEFAULT_CACHE_MB = 1024
TFDS_INSTALL_HINT = "pip install tensorflow-datasets"


def default_data_config() -> ml_collections.ConfigDict:
    """The `data` section of a training config (source + host pipeline settings)."""
    cfg = ml_collections.ConfigDict()
    # Where the HR images come from.
    cfg.source = "bundled"          # 'folder' | 'prepared' | 'tfds' | 'bundled'
    cfg.folder = ""                 # source='folder': image folder (searched recursively);
                                    # source='prepared': if set, checked against the manifest
    cfg.path = ""                   # source='prepared': output of scripts/prepare_data.py
    cfg.recursive = True
    cfg.tfds_name = ""              # source='tfds': e.g. 'div2k/bicubic_x4'
    cfg.tfds_split = "train"
    cfg.tfds_data_dir = ""          # '' = TFDS default data dir
    cfg.image_key = "image"         # feature holding the HR image ('image' or 'hr')
    cfg.split = "train"             # source='bundled': 'train' | 'heldout' | 'all'
    cfg.min_size = 0                # skip images whose shorter side is below this
    # folder / tfds: use only items first..last (1-based, inclusive, of the sorted names;
    # 0 = from the first / to the last), e.g. 1..3450 = the official DF2K range.
    cfg.first = 0
    cfg.last = 0
    cfg.cache_mb = DEFAULT_CACHE_MB  # LRU budget for decoded images (per process)
    # Host pipeline (kdsr_jax.data.pipeline).
    cfg.crop = "random"             # 'random' (§1.1) | 'pad_or_crop' (GAN, §2.1)
    cfg.small_images = "skip"       # crop='random', image < patch: 'skip' | 'pad'
    cfg.worker_threads = 2          # decode/crop threads (2-core machine default)
    cfg.worker_processes = 0        # > 0: decode in that many processes instead
    cfg.prefetch_batches = 2        # batches prepared ahead (at least one per thread)
    return cfg


class _LRUCache:
    """Thread-safe LRU of numpy arrays with a byte budget (`cachetools.LRUCache` sized by
    `nbytes`; cachetools itself is not thread-safe, hence the lock). An array larger than
    the whole budget is not cached."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(int(max_bytes), 0)
        self._items = cachetools.LRUCache(maxsize=self.max_bytes, getsizeof=_nbytes)
        self._lock = threading.Lock()

    def get(self, key: int) -> np.ndarray | None:
        with self._lock:
            return self._items.get(key)  # a hit marks the item most recently used

    def put(self, key: int, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key not in self._items:
                self._items[key] = value  # evicts least recently used items to fit

    def __getstate__(self):  # worker processes start with an empty cache
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])


def _nbytes(value: np.ndarray) -> int:
    return value.nbytes


class HRSource:
    """Random-access uint8 RGB images with skip-and-replace for bad items.

    Subclasses implement `_names` (list of item names) and `_decode(i)`.
    """

    def __init__(self, names: list[str], *, min_size: int = 0, cache_mb: float = DEFAULT_CACHE_MB,
                 skipped: dict[str, str] | None = None):
        self._names = list(names)
        self.min_size = int(min_size or 0)
        self.skipped: dict[str, str] = dict(skipped or {})
        self._bad: set[int] = set()
        self._lock = threading.Lock()
        self._cache = _LRUCache(int(cache_mb * 2**20))
        if not self._names:
            raise ValueError(f"{self.describe()}: no usable images"
                             + (f" ({len(self.skipped)} skipped)" if self.skipped else ""))

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def describe(self) -> str:
        return type(self).__name__

    def __len__(self) -> int:
        return len(self._names)

    def name(self, index: int) -> str:
        return self._names[index % len(self._names)]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _decode(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _mark_bad(self, index: int, reason: str) -> None:
        with self._lock:
            if index in self._bad:
                return
            self._bad.add(index)
            self.skipped[self._names[index]] = reason
        logger.warning("skipping image %s: %s", self._names[index], reason)

    def _load(self, index: int) -> np.ndarray | None:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        try:
            img = self._decode(index)
        except images.ImageError as exc:
            self._mark_bad(index, _reason(self._names[index], exc))
            return None
        if min(img.shape[:2]) < self.min_size:
            self._mark_bad(index, f"too small ({img.shape[0]}x{img.shape[1]} < {self.min_size})")
            return None
        self._cache.put(index, img)
        return img

    def __getitem__(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) of item `index`, or of the next good item if it is bad."""
        n = len(self._names)
        for offset in range(n):
            j = (int(index) + offset) % n
            if j in self._bad:
                continue
            img = self._load(j)
            if img is not None:
                return img
        raise ValueError(f"{self.describe()}: every image is unreadable or too small")


class ArraySource(HRSource):
    """In-memory images (the bundled photos, tests)."""

    def __init__(self, items: list[tuple[str, np.ndarray]], *, min_size: int = 0,
                 label: str = "in-memory images"):
        self.label = label
        keep, skipped = [], {}
        for name, img in items:
            if min(img.shape[:2]) < (min_size or 0):
                skipped[name] = f"too small ({img.shape[0]}x{img.shape[1]} < {min_size})"
                logger.warning("skipping image %s: %s", name, skipped[name])
            else:
                keep.append((name, _as_rgb_uint8(np.asarray(img), name)))
        self._arrays = [img for _, img in keep]
        super().__init__([name for name, _ in keep], min_size=min_size, cache_mb=0, skipped=skipped)

    def describe(self) -> str:
        return self.label

    def _decode(self, index: int) -> np.ndarray:
        return self._arrays[index]


class FolderSource(HRSource):
    """All images under a folder (recursive by default), sorted by relative path."""

    def __init__(self, folder, *, recursive: bool = True, min_size: int = 0,
                 cache_mb: float = DEFAULT_CACHE_MB, first: int = 0, last: int = 0):
        self.folder = str(folder)
        paths = images.list_images(folder, recursive=recursive)
        if not paths:
            raise ValueError(f"{folder}: no image files (extensions {', '.join(images.IMAGE_EXTENSIONS)})")
        paths = select_range(paths, first, last, f"image folder {folder}")
        keep, skipped = [], {}
        for path in paths:
            try:
                height, width = images.probe_image(path)
            except images.ImageError as exc:
                skipped[path] = _reason(path, exc)
            else:
                if min(height, width) < (min_size or 0):
                    skipped[path] = f"too small ({height}x{width} < {min_size})"
                else:
                    keep.append(path)
                    continue
            logger.warning("skipping image %s: %s", path, skipped[path])
        super().__init__(keep, min_size=min_size, cache_mb=cache_mb, skipped=skipped)

    def describe(self) -> str:
        return f"image folder {self.folder}"

    def _decode(self, index: int) -> np.ndarray:
        return images.load_image(self._names[index])


def select_range(names: list, first: int = 0, last: int = 0, label: str = "source") -> list:
    """names[first-1 : last] (1-based, inclusive; 0 = open end), as the official
    `--data_range 1-3450`. A `last` beyond the end keeps what there is (logged once)."""
    first, last = int(first or 0), int(last or 0)
    if not first and not last:
        return list(names)
    if first < 0 or last < 0 or (last and last < max(first, 1)):
        raise ValueError(f"data.first={first} / data.last={last}: not a 1-based range")
    if max(first, 1) > len(names):
        raise ValueError(f"{label}: data.first={first} but only {len(names)} images")
    if last > len(names):
        logger.warning("%s: data.last=%d but only %d images; using %d..%d", label, last,
                       len(names), max(first, 1), len(names))
    return list(names[max(first, 1) - 1:(last or len(names))])


class PreparedSource(HRSource):
    """A folder prepared by `scripts/prepare_data.py` (`prepared.prepare`): uint8 arrays
    memory-mapped per access, so nothing is decoded while training and nothing is cached
    (a crop reads only its own rows from the page cache; see `prepared`).

    Same images, order and skip / replace behaviour as `FolderSource` on the original
    folder, hence the same batches for the same seed. `folder`, if given, must still
    match the manifest's source fingerprint. Raises `prepared.PreparedDataError` (a
    ValueError) for a missing, unfinished, damaged or stale dataset.
    """

    def __init__(self, path, *, min_size: int = 0, folder=None, recursive: bool = True,
                 first: int = 0, last: int = 0):
        self.path = str(path)
        manifest = prepared.read_manifest(self.path)
        prepared.check_arrays(self.path, manifest)
        if folder:
            prepared.check_source(manifest, folder, recursive, root=self.path)
        elif not recursive and manifest.get("recursive", True):
            raise prepared.PreparedDataError(
                f"data.recursive=False has no effect on {self.path}: it was prepared "
                "recursively (data.recursive applies when preparing, and with data.folder)",
                "prepare the folder again with --no-recursive")
        self.manifest_info = {k: v for k, v in manifest.items() if k not in ("images", "skipped")}
        skipped = dict(manifest.get("skipped", {}))
        for name, reason in skipped.items():
            logger.warning("skipping image %s: %s", name, reason)
        # data.first / data.last count the folder's listing, unreadable files included,
        # exactly as FolderSource does.
        listing = sorted([e["name"] for e in manifest["images"]] + list(skipped))
        kept = set(select_range(listing, first, last, f"prepared data {self.path}"))
        skipped = {name: reason for name, reason in skipped.items() if name in kept}
        self._entries = []
        for entry in (e for e in manifest["images"] if e["name"] in kept):
            height, width = entry["probe"]
            if min(height, width) < (min_size or 0):
                skipped[entry["name"]] = f"too small ({height}x{width} < {min_size})"
                logger.warning("skipping image %s: %s", entry["name"], skipped[entry["name"]])
            else:
                self._entries.append(entry)
        super().__init__([e["name"] for e in self._entries], min_size=min_size, cache_mb=0,
                         skipped=skipped)

    def describe(self) -> str:
        return f"prepared data {self.path}"

    def _decode(self, index: int) -> np.ndarray:
        entry = self._entries[index]
        if "error" in entry:  # failed to decode when prepared: replaced, as in FolderSource
            raise images.ImageError(f"{entry['name']}: {entry['error']}")
        return prepared.open_array(f"{self.path}/{entry['file']}", entry["shape"], entry["offset"])


def _reason(name: str, exc: Exception) -> str:
    """An ImageError message without its leading '<name>: ' (the name is logged anyway)."""
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def _as_rgb_uint8(img: np.ndarray, name: str) -> np.ndarray:
    """Numeric image (H,W), (H,W,1|3|4); uint8 or uint16 -> uint8 (H, W, 3)."""
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise images.ImageError(f"{name}: expected an (H, W[, C]) image, got shape {img.shape}")
    if img.dtype == np.uint16:
        img = images.to_uint8_from_16(img)
    elif img.dtype != np.uint8:
        raise images.ImageError(f"{name}: expected uint8 or uint16 pixels, got {img.dtype}")
    channels = img.shape[-1]
    if channels in (1, 2):  # gray (+ alpha)
        img = np.repeat(img[..., :1], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


class TfdsSource(HRSource):
    """A TFDS dataset read through `tfds.data_source` (array_record, random access).

    TensorFlow is not needed: only `tensorflow_datasets` (imported here, lazily). A
    `data_source` object with the same interface (len + getitem returning feature
    dicts) can be passed instead, e.g. in tests.
    """

    def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None,
                 image_key: str = "image", min_size: int = 0, cache_mb: float = DEFAULT_CACHE_MB,
                 data_source=None):
        self.dataset_name, self.split, self.image_key = name, split, image_key
        if data_source is None:
            data_source = _open_tfds(name, split, data_dir)
        self._ds = data_source
        n = len(data_source)
        if n == 0:
            raise ValueError(f"TFDS {name}[{split}]: the split is empty")
        first = data_source[0]
        if not isinstance(first, dict) or image_key not in first:
            keys = sorted(first) if isinstance(first, dict) else type(first).__name__
            raise ValueError(f"TFDS {name}[{split}]: no feature {image_key!r} (features: {keys}); "
                             f"set data.image_key")
        super().__init__([f"{name}[{split}][{i}]" for i in range(n)], min_size=min_size,
                         cache_mb=cache_mb)

    def describe(self) -> str:
        return f"TFDS {self.dataset_name}[{self.split}]"

    def _decode(self, index: int) -> np.ndarray:
        name = self._names[index]
        try:
            value = self._ds[index][self.image_key]
        except Exception as exc:  # a corrupt record must not stop the run
            raise images.ImageError(f"{name}: cannot read record ({images._one_line(exc)})") from None
        if isinstance(value, (bytes, bytearray)):
            return images.decode_image_bytes(bytes(value), name)
        return _as_rgb_uint8(np.asarray(value), name)


def _open_tfds(name: str, split: str, data_dir: str | None):
    if not name:
        raise ValueError("data.source='tfds' needs data.tfds_name")
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ValueError(f"data.source='tfds' needs tensorflow_datasets ({TFDS_INSTALL_HINT}); "
                         f"TensorFlow itself is not required") from None
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as exc:  # tfds raises many types (DatasetNotFoundError, ...)
        raise ValueError(f"cannot open TFDS {name}[{split}]: {images._one_line(exc)}") from None


def bundled_source(split: str = "train", *, min_size: int = 0) -> ArraySource:
    """The scikit-image photos of `split` (see `samples`)."""
    return ArraySource(samples.bundled_images(split), min_size=min_size,
                       label=f"bundled photos ({split})")


def make_source(data_cfg, *, min_size: int | None = None) -> HRSource:
    """Builds the HR source described by a `default_data_config()`-style ConfigDict.

    `min_size` overrides (raises) `data_cfg.min_size`, e.g. to the crop size.
    """
    floor = max(int(data_cfg.get("min_size", 0) or 0), int(min_size or 0))
    cache_mb = data_cfg.get("cache_mb", DEFAULT_CACHE_MB)
    kind = data_cfg.get("source", "bundled")
    if kind == "folder":
        if not data_cfg.get("folder"):
            raise ValueError("data.source='folder' needs data.folder")
        return FolderSource(data_cfg.get("folder"), recursive=data_cfg.get("recursive", True),
                            min_size=floor, cache_mb=cache_mb, first=data_cfg.get("first", 0),
                            last=data_cfg.get("last", 0))
    if kind == "prepared":
        return PreparedSource(data_cfg.get("path", ""), min_size=floor,
                              folder=data_cfg.get("folder") or None,
                              recursive=data_cfg.get("recursive", True),
                              first=data_cfg.get("first", 0), last=data_cfg.get("last", 0))
    if kind == "tfds":
        return TfdsSource(data_cfg.get("tfds_name", ""), split=data_cfg.get("tfds_split", "train"),
                          data_dir=data_cfg.get("tfds_data_dir") or None,
                          image_key=data_cfg.get("image_key", "image"), min_size=floor,
                          cache_mb=cache_mb)
    if kind == "bundled":
        return bundled_source(data_cfg.get("split", "train"), min_size=floor)
    raise ValueError(f"unknown data.source {kind!r}; expected one of {SOURCE_KINDS}")
