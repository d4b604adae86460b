"""Read and write PyTorch `.pth` checkpoints without importing torch.

The official KDSR trainers save state dicts with `torch.save` (reference/ARCHITECTURE.md
§8: classic = a flat `OrderedDict` of tensors, GAN/BasicSR = `{'params': ...,
'params_ema': ...}`). Since torch 1.6 such a file is a zip archive:

    <prefix>/data.pkl             pickle (protocol 2) of the object; every tensor is a
                                  call `torch._utils._rebuild_tensor_v2(storage, offset,
                                  size, stride, requires_grad, hooks)` whose `storage` is a
                                  persistent id ('storage', torch.FloatStorage, key,
                                  location, numel)
    <prefix>/data/<key>           the raw bytes of storage <key>
    <prefix>/byteorder            'little' or 'big' (absent in old files: little)
    <prefix>/version, .format_version, .storage_alignment, .data/serialization_id

`load_pth` unpickles `data.pkl` with a restricted unpickler: it resolves only the few
globals a tensor state dict needs and refuses everything else *before* anything is
called, so a malicious file cannot run code. Tensors come back as owning, contiguous
numpy arrays with the saved dtype, shape, strides and storage offset honoured.

`save_pth` writes the same layout with a small hand-written pickle emitter (again no
torch), so `torch.load(path, weights_only=True)` reads it back.

State-dict `_metadata` (torch's per-module version numbers, used by `load_state_dict`
hooks): `load_pth` returns state dicts as `collections.OrderedDict` objects carrying the
attribute `_metadata`, exactly as torch's `state_dict()` does; `metadata_of(d)` reads it
(None when absent), `with_metadata(d, metadata)` attaches it, and `save_pth` writes it
back whenever a mapping has it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pathlib
import pickle
import struct
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

try:  # bfloat16 for numpy; ships with jax.
    import ml_dtypes

    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - jax always brings ml_dtypes
    _BFLOAT16 = None

__all__ = [
    "CheckpointError",
    "load_pth",
    "save_pth",
    "metadata_of",
    "with_metadata",
]


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or written; the message is one line."""


# torch storage class name -> numpy dtype (all little-endian on disk).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}
if _BFLOAT16 is not None:
    _STORAGE_DTYPES["BFloat16Storage"] = _BFLOAT16

# Legacy (torch < 1.6 / _use_new_zipfile_serialization=False) files start with a
# protocol-2 pickle of this magic number.
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# Sanity caps checked BEFORE anything is allocated (issue: a tiny file declaring a huge
# tensor through stride 0, or a zip bomb of a storage record). The largest official KDSR
# file (KDSRs-L / KDSR-GAN) is about 30 MB; these leave ample room for any real model.
MAX_PICKLE_BYTES = 64 << 20          # data.pkl itself (a state dict's pickle is KBs)
MAX_TOTAL_BYTES = 4 << 30            # all storages + tensors materialised from one file
MAX_COMPRESSION_RATIO = 200          # deflated records: declared size / stored size
_RATIO_FREE_BYTES = 1 << 20          # records up to 1 MiB are never a bomb worth checking

_ALIGNMENT = 64  # torch's .storage_alignment: storage data starts at multiples of 64
_ZIP_LOCAL_HEADER = 30  # fixed part of a zip local file header
_PAD_EXTRA_ID = b"FB"  # extra-field id torch uses for its alignment padding


# --------------------------------------------------------------------------- reading


class _StorageType:
    """Stand-in for `torch.<X>Storage` inside data.pkl: only carries a dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _LoadedDict(collections.OrderedDict):
    """Stand-in for `collections.OrderedDict` while unpickling: BUILD may set only
    `_metadata` (what torch state dicts carry), nothing else."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or set(state) - {"_metadata"}:
            raise CheckpointError(
                "data.pkl sets unexpected attributes on an OrderedDict: "
                f"{sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__}"
            )
        if "_metadata" in state:
            self._metadata = state["_metadata"]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """numpy version of `torch._utils._rebuild_tensor_v2`: an owning contiguous copy of
    the strided view, after checking that the view stays inside the storage."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise CheckpointError("data.pkl rebuilds a tensor from something that is not a storage")
    try:
        offset = int(storage_offset)
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
    except (TypeError, ValueError):
        raise CheckpointError("data.pkl has a tensor with a malformed size/stride") from None
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"data.pkl has a tensor with invalid size {size} / stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.shape[0]:
        raise CheckpointError(
            f"tensor of size {size}, stride {stride}, offset {offset} reads past the end "
            f"of its storage ({storage.shape[0]} elements)")
    item = storage.dtype.itemsize
    nbytes = math.prod(size) * item
    if nbytes > MAX_TOTAL_BYTES or (math.prod(size) > storage.shape[0]
                                    and nbytes > _RATIO_FREE_BYTES):
        # Only overlapping (stride-0) views hold more elements than their storage; a
        # state dict never needs one big enough to matter, so refuse before copying.
        raise CheckpointError(
            f"tensor of size {size} ({nbytes} bytes) is larger than its storage "
            f"({storage.shape[0]} elements) or the {MAX_TOTAL_BYTES >> 30} GiB cap; "
            "refusing to allocate it")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False)
    return np.array(view, dtype=storage.dtype, order="C", copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    """`torch._utils._rebuild_parameter`: a Parameter is just its data here."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError("data.pkl rebuilds a Parameter from something that is not a tensor")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _LoadedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data.pkl: whitelisted globals only; storages read from the zip."""

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, np.ndarray] = {}
        self._tensor_budget = MAX_TOTAL_BYTES   # bytes all rebuilt tensors may take

    def _rebuild_tensor(self, storage, storage_offset, size, *args):
        """`_rebuild_tensor_v2`, counting the copies against one budget per file (many
        small stride-0 views must not add up to gigabytes either)."""
        try:
            nbytes = math.prod(int(n) for n in size) * getattr(storage, "itemsize", 1)
        except (TypeError, ValueError):
            raise CheckpointError("data.pkl has a tensor with a malformed size") from None
        self._tensor_budget -= max(0, nbytes)
        if self._tensor_budget < 0:
            raise CheckpointError(
                f"the tensors of this file add up to more than {MAX_TOTAL_BYTES >> 30} GiB; "
                "refusing to allocate them")
        return _rebuild_tensor_v2(storage, storage_offset, size, *args)

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load global '{module}.{name}': only tensor state dicts "
                "(OrderedDict, tensors, storages) are allowed") from None
        except TypeError:  # unhashable junk from a corrupt stream
            raise CheckpointError("data.pkl references a malformed global") from None

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int)):
            raise CheckpointError(f"unsupported persistent id in data.pkl: {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            nbytes = numel * stype.dtype.itemsize
            if numel < 0:
                raise CheckpointError(f"storage {key} declares {numel} elements")
            raw = self._read_storage(key, nbytes)
            if len(raw) < nbytes:
                raise CheckpointError(
                    f"storage {key} holds {len(raw)} bytes, expected {nbytes} "
                    f"({numel} x {stype.dtype})")
            self._storages[key] = np.frombuffer(raw, dtype=stype.dtype, count=numel)
        storage = self._storages[key]
        if storage.dtype != stype.dtype:
            raise CheckpointError(f"storage {key} is used with two dtypes")
        return storage


def _finalise(obj, seen=None):
    """Replace the unpickling stand-ins by plain OrderedDicts (keeping `_metadata`)
    and check that only plain data came out."""
    if seen is None:
        seen = {}
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, _LoadedDict):
        out = collections.OrderedDict()
        seen[id(obj)] = out
        for k, v in obj.items():
            out[k] = _finalise(v, seen)
        if "_metadata" in obj.__dict__:
            out._metadata = _finalise(obj.__dict__["_metadata"], seen)
        return out
    if isinstance(obj, dict):
        out = {}
        seen[id(obj)] = out
        for k, v in obj.items():
            out[k] = _finalise(v, seen)
        return out
    if isinstance(obj, list):
        out = []
        seen[id(obj)] = out
        out.extend(_finalise(v, seen) for v in obj)
        return out
    if isinstance(obj, tuple):
        return tuple(_finalise(v, seen) for v in obj)
    if isinstance(obj, _StorageType):
        raise CheckpointError("data.pkl holds a bare storage type, not a tensor")
    return obj


def _describe_non_zip(head: bytes) -> str:
    if head.startswith(_LEGACY_PREFIX) or head[:1] == b"\x80":
        return ("is in the legacy (pre-1.6, non-zip) torch format, which is not supported; "
                "re-save it with torch>=1.6: torch.save(torch.load(old, map_location='cpu'), new)")
    if len(head) == 0:
        return "is empty"
    return "is not a zip archive (truncated or not a torch.save checkpoint)"


def load_pth(path) -> dict:
    """Load a `torch.save` zip checkpoint as nested dicts of numpy arrays (no torch).

    Returns the saved object with every tensor replaced by a contiguous numpy array
    (owning its memory, saved dtype and shape). Dicts keep their key order; state dicts
    are `collections.OrderedDict`s whose torch `_metadata` is kept as the attribute
    `._metadata` (see `metadata_of`). Raises `CheckpointError` (one line) when the file
    is missing, truncated/corrupt, not a torch checkpoint, in the legacy format,
    big-endian, or references anything but tensors.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_PREFIX))
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} {_describe_non_zip(head)}")
        with zipfile.ZipFile(path) as zf:
            obj = _load_from_zip(zf, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {_one_line(e)}") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, RecursionError) as e:
        raise CheckpointError(f"{path} has a corrupt data.pkl: {_one_line(e)}") from None
    return obj


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:200]


def _load_from_zip(zf: zipfile.ZipFile, path: pathlib.Path):
    names = zf.namelist()
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise CheckpointError(
            f"{path} is a zip archive but not a torch checkpoint (no <archive>/data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    names_set = set(names)
    byteorder_name = prefix + "byteorder"
    if byteorder_name in names_set:
        order = zf.read(byteorder_name).decode("ascii", "replace").strip()
        if order != "little":
            raise CheckpointError(
                f"{path} was saved on a {order}-endian machine; only little-endian "
                "checkpoints are supported")

    budget = [MAX_TOTAL_BYTES]

    def read_record(name: str) -> bytes:
        """zf.read(name) after checking the declared sizes (no bomb is inflated)."""
        info = zf.getinfo(name)
        if info.file_size > budget[0]:
            raise CheckpointError(
                f"{path}: record {name} declares {info.file_size} bytes, over the "
                f"{MAX_TOTAL_BYTES >> 30} GiB cap for one checkpoint; refusing to read it")
        if (info.compress_type != zipfile.ZIP_STORED and info.file_size > _RATIO_FREE_BYTES
                and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size)):
            raise CheckpointError(
                f"{path}: record {name} inflates {info.compress_size} bytes to "
                f"{info.file_size} (a zip bomb?); refusing to read it")
        budget[0] -= info.file_size
        return zf.read(name)

    def read_storage(key: str, nbytes: int) -> bytes:
        name = f"{prefix}data/{key}"
        if name not in names_set:
            raise CheckpointError(f"{path} is missing the storage record {name}")
        declared = zf.getinfo(name).file_size
        if declared < nbytes:
            raise CheckpointError(f"storage {key} holds {declared} bytes, expected {nbytes}")
        return read_record(name)

    if zf.getinfo(pkls[0]).file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: data.pkl declares {zf.getinfo(pkls[0]).file_size} "
                              f"bytes, over the {MAX_PICKLE_BYTES >> 20} MiB cap")
    data = read_record(pkls[0])
    obj = _RestrictedUnpickler(io.BytesIO(data), read_storage).load()
    return _finalise(obj)


# --------------------------------------------------------------------------- metadata


def metadata_of(state_dict: Mapping) -> Any:
    """torch's `_metadata` of a loaded state dict (an OrderedDict), or None."""
    return getattr(state_dict, "_metadata", None)


def with_metadata(state_dict: Mapping, metadata) -> collections.OrderedDict:
    """An OrderedDict copy of `state_dict` carrying torch `_metadata` (for `save_pth`)."""
    out = collections.OrderedDict(state_dict)
    if metadata is not None:
        out._metadata = metadata
    return out


# --------------------------------------------------------------------------- writing


class _PickleWriter:
    """Emits the protocol-2 pickle that torch.save writes for a state dict, with
    tensors as `_rebuild_tensor_v2` calls over persistent storage ids. Hand-written
    because stdlib pickling would need the real torch globals to be importable."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[bytes] = []
        # id(source array) -> (array, storage key): an array met twice (e.g. the same
        # weights under 'params' and 'params_ema') is stored once, as torch.save
        # stores a shared storage once. The array is kept so its id stays unique.
        self._shared: dict[int, tuple[Any, str]] = {}

    # -- opcode helpers
    def _w(self, b: bytes):
        self.out.write(b)

    def _global(self, module: str, name: str):
        self._w(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def _str(self, s: str):
        b = s.encode("utf-8", "surrogatepass")
        self._w(pickle.BINUNICODE + struct.pack("<I", len(b)) + b)

    def _int(self, i: int):
        if -(2**31) <= i < 2**31:
            self._w(pickle.BININT + struct.pack("<i", i))
        else:
            b = pickle.encode_long(i)
            if len(b) >= 256:
                raise CheckpointError(f"integer too large to save: {i}")
            self._w(pickle.LONG1 + bytes([len(b)]) + b)

    def _tuple(self, items, where):
        self._w(pickle.MARK)
        for v in items:
            self.value(v, where)
        self._w(pickle.TUPLE)

    def _ordered_dict(self, items):
        self._global("collections", "OrderedDict")
        self._w(pickle.EMPTY_TUPLE + pickle.REDUCE)
        return items

    # -- values
    def value(self, v, where: str = "<root>"):
        if v is None:
            self._w(pickle.NONE)
        elif isinstance(v, (np.ndarray, np.generic)):  # numpy scalars carry a dtype: 0-d tensors
            self.tensor(np.asarray(v), where, source=v if isinstance(v, np.ndarray) else None)
        elif isinstance(v, bool):
            self._w(pickle.NEWTRUE if v else pickle.NEWFALSE)
        elif isinstance(v, int):
            self._int(v)
        elif isinstance(v, float):
            self._w(pickle.BINFLOAT + struct.pack(">d", v))
        elif isinstance(v, str):
            self._str(v)
        elif isinstance(v, Mapping):
            self.mapping(v, where)
        elif isinstance(v, tuple):
            self._tuple(v, where)
        elif isinstance(v, list):
            self._w(pickle.EMPTY_LIST + pickle.MARK)
            for i, x in enumerate(v):
                self.value(x, f"{where}[{i}]")
            self._w(pickle.APPENDS)
        elif hasattr(v, "__array__") and hasattr(v, "dtype") and hasattr(v, "shape"):
            self.tensor(np.asarray(v), where, source=v)
        else:
            raise CheckpointError(f"cannot save a value of type {type(v).__name__} at {where}")

    def mapping(self, m: Mapping, where: str):
        metadata = getattr(m, "_metadata", None)
        is_state_dict = (
            isinstance(m, collections.OrderedDict) or metadata is not None
            or (len(m) > 0 and all(hasattr(x, "shape") and hasattr(x, "dtype")
                                   for x in m.values())))
        if is_state_dict:
            self._ordered_dict(m)
        else:
            self._w(pickle.EMPTY_DICT)
        if m:
            self._w(pickle.MARK)
            for k, x in m.items():
                if not isinstance(k, (str, int)):
                    raise CheckpointError(f"cannot save a dict key of type {type(k).__name__} at {where}")
                self.value(k, where)
                self.value(x, f"{where}.{k}" if where != "<root>" else str(k))
            self._w(pickle.SETITEMS)
        if is_state_dict and metadata is not None:
            # BUILD with a dict state sets `_metadata` as an attribute, as torch does.
            self._w(pickle.EMPTY_DICT)
            self._str("_metadata")
            self.value(metadata, f"{where}._metadata")
            self._w(pickle.SETITEM + pickle.BUILD)

    def tensor(self, a: np.ndarray, where: str, source: Any = None):
        name = next((n for n, dt in _STORAGE_DTYPES.items()
                     if dt == a.dtype or (a.dtype.byteorder == ">" and dt == a.dtype.newbyteorder("<"))),
                    None)
        if name is None:
            raise CheckpointError(f"cannot save an array of dtype {a.dtype} at {where}")
        dtype = _STORAGE_DTYPES[name]
        a = np.ascontiguousarray(a, dtype=dtype)
        source = a if source is None else source
        if id(source) in self._shared:
            key = self._shared[id(source)][1]
        else:
            key = str(len(self.storages))
            self.storages.append(a.tobytes(order="C"))
            self._shared[id(source)] = (source, key)
        stride, acc = [], 1
        for n in reversed(a.shape):
            stride.append(acc)
            acc *= max(n, 1)
        stride = tuple(reversed(stride))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._w(pickle.MARK)
        # persistent id: ('storage', torch.<X>Storage, key, 'cpu', numel)
        self._w(pickle.MARK)
        self._str("storage")
        self._global("torch", name)
        self._str(key)
        self._str("cpu")
        self._int(int(a.size))
        self._w(pickle.TUPLE + pickle.BINPERSID)
        self._int(0)  # storage_offset
        self._tuple(a.shape, where)
        self._tuple(stride, where)
        self._w(pickle.NEWFALSE)  # requires_grad
        self._ordered_dict(())  # backward_hooks
        self._w(pickle.TUPLE + pickle.REDUCE)

    def finish(self) -> bytes:
        return pickle.PROTO + b"\x02" + self.out.getvalue() + pickle.STOP


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """A stored (uncompressed) ZipInfo whose data starts at a multiple of _ALIGNMENT,
    padding the local header's extra field as torch's writer does."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    start = zf.fp.tell() + _ZIP_LOCAL_HEADER + len(name.encode("utf-8")) + 4
    pad = (-start) % _ALIGNMENT
    info.extra = _PAD_EXTRA_ID + struct.pack("<H", pad) + b"Z" * pad
    return info


def save_pth(obj, path, compress: bool = False) -> None:
    """Write `obj` as a `torch.save`-compatible zip that `torch.load(path,
    weights_only=True)` reads (no torch needed here).

    `compress=False` (default) writes the byte layout of `torch.save` itself (stored
    entries, 64-byte aligned). `compress=True` deflates every entry (level 6; what
    `kdsr_jax.convert.to_torch` writes): torch's zip reader (miniz) inflates deflated
    entries, so `torch.load` reads it as usual, except `torch.load(..., mmap=True)`,
    which needs stored entries.

    `obj` is nested mappings/lists/tuples of arrays (numpy, jax, anything with
    `__array__`), str, int, float, bool and None. Arrays (and numpy scalars, as 0-d
    arrays) become contiguous CPU tensors of the same dtype (pass float32 arrays to get what the official trainers write).
    A mapping that is an OrderedDict, carries `_metadata`, or holds only arrays is
    written as an `OrderedDict` state dict (with its `_metadata` when present, see
    `with_metadata`); other mappings as plain dicts (e.g. BasicSR's
    `{'params': ..., 'params_ema': ...}`). The file is written atomically.
    """
    path = pathlib.Path(path)
    writer = _PickleWriter()
    writer.value(obj)
    pkl = writer.finish()
    prefix = "archive/"
    records = [("data.pkl", pkl), (".format_version", b"1"),
               (".storage_alignment", str(_ALIGNMENT).encode()), ("byteorder", b"little")]
    records += [(f"data/{i}", b) for i, b in enumerate(writer.storages)]
    digest = hashlib.sha256(pkl)
    for b in writer.storages:
        digest.update(b)
    serial = str(int(digest.hexdigest()[:32], 16)).zfill(40)[:40]
    records += [("version", b"3\n"), (".data/serialization_id", serial.encode())]

    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, data in records:
                    if compress:
                        info = zipfile.ZipInfo(prefix + name, date_time=(1980, 1, 1, 0, 0, 0))
                        info.external_attr = 0o600 << 16
                        zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED,
                                    compresslevel=6)
                    else:
                        zf.writestr(_aligned_info(zf, prefix + name), data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; torch.save files are world-readable
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise CheckpointError(f"cannot write {path}: {_one_line(e)}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(p):
    try:
        os.unlink(p)
    except OSError:
        pass
