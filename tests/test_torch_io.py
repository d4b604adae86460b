"""Tests for kdsr_jax.convert.torch_io: torch-free .pth reading/writing.

Cross-checks use torch (a test-only dependency) when it is installed; the safety and
error tests need no torch.
"""

import collections
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from kdsr_jax.convert.torch_io import (
    CheckpointError,
    load_pth,
    metadata_of,
    save_pth,
    with_metadata,
)

FIXTURE_PTHS = [
    "classic_ta_small_x4", "classic_ta_small_x2", "classic_st_small_x4",
    "classic_st_small_x2", "gan_ta_small_x4", "gan_st_small_x4", "gan_st_small_x2",
    "gan_d_small",
]


def _assert_same_as_torch(ours, theirs, where="<root>"):
    """Exact structural and bitwise equality between load_pth output and torch.load."""
    import torch

    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray), where
        assert ours.flags.c_contiguous and ours.flags.owndata and ours.flags.writeable, where
        ref = theirs.detach().contiguous()
        if ref.dtype == torch.bfloat16:
            ref_np = ref.view(torch.int16).numpy()
            ours = ours.view(np.int16)
        else:
            ref_np = ref.numpy()
        assert ours.dtype == ref_np.dtype, where
        assert ours.shape == ref_np.shape, where
        np.testing.assert_array_equal(ours, ref_np, err_msg=where)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs), (where, type(ours), type(theirs))
        assert list(ours) == list(theirs), where
        assert getattr(ours, "_metadata", None) == getattr(theirs, "_metadata", None), where
        for k in theirs:
            _assert_same_as_torch(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same_as_torch(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


# ------------------------------------------------------------------ fixtures vs torch


@pytest.mark.parametrize("name", FIXTURE_PTHS)
def test_load_pth_equals_torch_load_on_fixture_exactly(fixtures_dir, name):
    """Fixture <name>.pth: load_pth == torch.load(weights_only=True), bitwise, same key
    order, same dict types and same `_metadata` (tolerance: exact)."""
    torch = pytest.importorskip("torch")
    path = fixtures_dir / f"{name}.pth"
    ours = load_pth(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_as_torch(ours, theirs)


def test_loaded_state_dict_keeps_metadata_and_float32(fixtures_dir):
    """Fixture classic_st_small_x4.pth: a flat OrderedDict of float32 arrays whose torch
    `_metadata` is exposed as attribute / metadata_of (needs no torch)."""
    sd = load_pth(fixtures_dir / "classic_st_small_x4.pth")
    assert isinstance(sd, collections.OrderedDict)
    assert list(sd)[:2] == ["G.sub_mean.weight", "G.sub_mean.bias"]
    assert all(v.dtype == np.float32 for v in sd.values())
    assert sd["G.head.0.weight"].shape == (16, 3, 3, 3)
    meta = metadata_of(sd)
    assert meta[""] == {"version": 1} and "E_st.compress.0" in meta


def test_gan_fixture_keeps_plain_dict_wrapper_and_both_param_sets(fixtures_dir):
    """Fixture gan_st_small_x4.pth: BasicSR's plain {'params', 'params_ema'} dict of
    OrderedDict state dicts; the decoy 'params' is exactly 0.5 * params_ema."""
    ck = load_pth(fixtures_dir / "gan_st_small_x4.pth")
    assert type(ck) is dict and list(ck) == ["params", "params_ema"]
    w = "G.head.0.weight"
    np.testing.assert_array_equal(ck["params"][w], 0.5 * ck["params_ema"][w])


def test_load_pth_does_not_import_torch(fixtures_dir):
    """load_pth works in a process where importing torch is impossible."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from kdsr_jax.convert.torch_io import load_pth\n"
        f"d = load_pth({str(fixtures_dir / 'gan_d_small.pth')!r})\n"
        "print(len(d['params']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 28


# ------------------------------------------------------------------ round trips


def _sample_state_dict():
    rng = np.random.default_rng(0)
    sd = collections.OrderedDict()
    sd["conv.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    sd["conv.bias"] = rng.standard_normal(4).astype(np.float32)
    sd["scalar"] = np.float32(2.5) * np.ones((), np.float32)
    sd["empty"] = np.zeros((0, 5), np.float32)
    sd["steps"] = np.arange(7, dtype=np.int64)
    sd["mask"] = np.array([True, False, True])
    sd["half"] = rng.standard_normal(5).astype(np.float16)
    sd["double"] = rng.standard_normal((2, 2))
    sd["fortran"] = np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32))
    meta = collections.OrderedDict([("", {"version": 1}), ("conv", {"version": 1})])
    return with_metadata(sd, meta)


def test_save_pth_is_read_by_torch_load_weights_only_exactly(tmp_path):
    """save_pth -> torch.load(weights_only=True): same values, dtypes, key order,
    OrderedDict state dicts with `_metadata`, a plain-dict wrapper, scalars kept."""
    torch = pytest.importorskip("torch")
    sd = _sample_state_dict()
    obj = {"params": sd, "params_ema": sd, "iter": 1200, "lr": 1e-4, "name": "x", "flag": None}
    path = tmp_path / "out.pth"
    save_pth(obj, path)
    back = torch.load(path, map_location="cpu", weights_only=True)
    assert type(back) is dict and list(back) == list(obj)
    assert back["iter"] == 1200 and back["lr"] == 1e-4 and back["name"] == "x"
    assert back["flag"] is None
    for key in ("params", "params_ema"):
        assert isinstance(back[key], collections.OrderedDict)
        assert list(back[key]) == list(sd)
        assert back[key]._metadata == sd._metadata
        for k, v in sd.items():
            t = back[key][k]
            assert not t.requires_grad and t.device.type == "cpu"
            np.testing.assert_array_equal(t.numpy(), v, err_msg=k)
            assert t.numpy().dtype == v.dtype, k
    # And load_pth reads our own file back identically to torch.
    _assert_same_as_torch(load_pth(path), back)


def test_save_pth_output_loads_into_torch_module(tmp_path):
    """A state dict written by save_pth goes through nn.Module.load_state_dict(strict)."""
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(2, 2))
    arrays = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    ours = with_metadata(arrays, net.state_dict()._metadata)
    path = tmp_path / "net.pth"
    save_pth(ours, path)
    net2 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(2, 2))
    net2.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for k, v in arrays.items():
        np.testing.assert_array_equal(net2.state_dict()[k].numpy(), v)


def test_save_pth_accepts_jax_and_bfloat16_arrays(tmp_path):
    """jax arrays (float32, bfloat16) are written as tensors of the same dtype."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7
    obj = collections.OrderedDict(w=x, b=x.astype(jnp.bfloat16))
    save_pth(obj, tmp_path / "j.pth")
    back = torch.load(tmp_path / "j.pth", weights_only=True)
    assert back["w"].dtype == torch.float32 and back["b"].dtype == torch.bfloat16
    np.testing.assert_array_equal(back["w"].numpy(), np.asarray(x))
    np.testing.assert_array_equal(back["b"].float().numpy(), np.asarray(x.astype(jnp.bfloat16), np.float32))
    loaded = load_pth(tmp_path / "j.pth")
    assert loaded["b"].dtype == np.asarray(x.astype(jnp.bfloat16)).dtype


def test_load_pth_honours_strides_offsets_and_shared_storage_from_torch_save(tmp_path):
    """torch.save of transposed, sliced (storage offset), expanded and storage-sharing
    tensors, Parameters and several dtypes: load_pth == torch.load exactly."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    obj = collections.OrderedDict()
    obj["transposed"] = base.t()
    obj["row_slice"] = base[2:5]
    obj["col_slice"] = base[:, 3:6]
    obj["strided"] = base[::2, 1::3]
    obj["expanded"] = torch.randn(1, 4, generator=g).expand(3, 4)
    obj["same_storage"] = base.view(-1)[10:20]
    obj["param"] = torch.nn.Parameter(torch.randn(2, 3, generator=g))
    obj["int64"] = torch.arange(5)
    obj["bf16"] = torch.randn(3, 2, generator=g).to(torch.bfloat16)
    obj["f16"] = torch.randn(4, generator=g).half()
    obj["bool"] = torch.tensor([True, False])
    obj["scalar"] = torch.tensor(3.5)
    obj["nested"] = {"list": [base[0], 3], "tuple": (base[1, 2:4], "s")}
    path = tmp_path / "strided.pth"
    torch.save(obj, path)
    ours = load_pth(path)
    theirs = torch.load(path, weights_only=True)
    theirs["param"] = theirs["param"].detach()
    _assert_same_as_torch(ours, theirs)
    assert ours["row_slice"].base is None  # an owning copy, not a view of the storage


def test_save_pth_replaces_file_atomically_and_cleans_up_on_error(tmp_path):
    """A failing save leaves the previous file intact and no temp file behind."""
    path = tmp_path / "ck.pth"
    save_pth({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="cannot save a value of type object"):
        save_pth({"a": np.ones(3, np.float32), "bad": object()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]
    np.testing.assert_array_equal(load_pth(path)["a"], np.ones(3, np.float32))


def test_save_pth_aligns_storages_to_64_bytes(tmp_path):
    """Storage records start at 64-byte offsets, as torch's writer lays them out."""
    path = tmp_path / "al.pth"
    save_pth({"a": np.ones(3, np.float32), "b": np.ones(5, np.float64)}, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename:
                n_name, n_extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
                assert (info.header_offset + 30 + n_name + n_extra) % 64 == 0


# ------------------------------------------------------------------ safety


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _zip_with_pickle(path, pkl: bytes, extra=None):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", b"3\n")
        for name, data in (extra or {}).items():
            zf.writestr(f"archive/{name}", data)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, kind, protocol):
    """A data.pkl whose REDUCE calls os.system / eval raises CheckpointError naming the
    global, and the command never runs (its marker file is not created). Protocol 2
    writes GLOBAL (with py2 names, e.g. __builtin__), protocol 4 STACK_GLOBAL."""
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Evil(os.system, f"touch {marker}")
    else:
        payload = _Evil(eval, f"open({str(marker)!r}, 'w').close()")
    pkl = pickle.dumps(collections.OrderedDict(w=payload), protocol=protocol)
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, pkl)
    expected = r"(posix|os)\.system" if kind == "os.system" else r"(__builtin__|builtins)\.eval"
    with pytest.raises(CheckpointError, match=f"refusing to load global '{expected}'"):
        load_pth(path)
    assert not marker.exists()


def test_pickle_setting_arbitrary_attributes_is_refused(tmp_path):
    """BUILD on an OrderedDict may only set `_metadata`."""
    od = collections.OrderedDict(a=1)
    od.__dict__["__class__"] = "x"
    pkl = pickle.dumps(od, protocol=2)
    path = tmp_path / "attr.pth"
    _zip_with_pickle(path, pkl)
    with pytest.raises(CheckpointError, match="unexpected attributes"):
        load_pth(path)


def _tensor_pickle(numel: int, size: tuple, stride: tuple, offset: int = 0) -> bytes:
    """Hand-written data.pkl holding one float tensor over storage '0'."""
    P = pickle

    def tup(xs):
        return P.MARK + b"".join(P.BININT + struct.pack("<i", x) for x in xs) + P.TUPLE

    def s(x):
        b = x.encode()
        return P.BINUNICODE + struct.pack("<I", len(b)) + b

    return (P.PROTO + b"\x02" + P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + P.MARK
            + P.MARK + s("storage") + P.GLOBAL + b"torch\nFloatStorage\n" + s("0") + s("cpu")
            + P.BININT + struct.pack("<i", numel) + P.TUPLE + P.BINPERSID
            + P.BININT + struct.pack("<i", offset) + tup(size) + tup(stride) + P.NEWFALSE
            + P.EMPTY_DICT + P.TUPLE + P.REDUCE + P.STOP)


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
    """A size/stride/offset that would read outside the storage is an error, not an
    out-of-bounds memory read."""
    path = tmp_path / "oob.pth"
    _zip_with_pickle(path, _tensor_pickle(4, (10,), (1,)), {"data/0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match="reads past the end of its storage"):
        load_pth(path)
    _zip_with_pickle(path, _tensor_pickle(4, (2, 2), (2, 1), offset=1),
                     {"data/0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match="reads past the end"):
        load_pth(path)
    # The same hand-written pickle within bounds loads fine (the check is not over-eager).
    _zip_with_pickle(path, _tensor_pickle(4, (2, 2), (1, 2)), {"data/0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(load_pth(path), np.array([[0, 2], [1, 3]], np.float32))


def test_storage_shorter_than_declared_is_refused(tmp_path):
    path = tmp_path / "short.pth"
    _zip_with_pickle(path, _tensor_pickle(4, (4,), (1,)), {"data/0": np.zeros(3, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match="storage 0 holds 12 bytes, expected 16"):
        load_pth(path)


# ------------------------------------------------------------------ error messages


def _one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file_error(tmp_path):
    assert "checkpoint not found" in _one_line_error(tmp_path / "nope.pth")


def test_truncated_checkpoint_error(fixtures_dir, tmp_path):
    """Fixture classic_st_small_x4.pth cut in half / with its tail dropped."""
    raw = (fixtures_dir / "classic_st_small_x4.pth").read_bytes()
    for n in (len(raw) // 2, len(raw) - 30, 10):
        p = tmp_path / f"trunc{n}.pth"
        p.write_bytes(raw[:n])
        msg = _one_line_error(p)
        assert "truncated" in msg or "corrupt" in msg, msg


def test_corrupted_storage_bytes_error(fixtures_dir, tmp_path):
    """A flipped byte inside a storage fails the zip CRC: reported as corrupt."""
    src = fixtures_dir / "classic_st_small_x4.pth"
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/3"))
    n_name, n_extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + n_name + n_extra + 5] ^= 0xFF
    p = tmp_path / "flip.pth"
    p.write_bytes(bytes(raw))
    assert "corrupt" in _one_line_error(p)


def test_zip_that_is_not_a_torch_checkpoint_error(tmp_path):
    p = tmp_path / "random.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("hello.txt", "hi")
        zf.writestr("dir/other.bin", os.urandom(100))
    assert "not a torch checkpoint" in _one_line_error(p)


def test_random_bytes_and_empty_file_errors(tmp_path):
    p = tmp_path / "noise.pth"
    p.write_bytes(np.random.default_rng(1).bytes(1000))
    assert "not a zip archive" in _one_line_error(p)
    e = tmp_path / "empty.pth"
    e.write_bytes(b"")
    assert "empty" in _one_line_error(e)


def test_corrupt_pickle_stream_error(tmp_path):
    p = tmp_path / "badpkl.pth"
    _zip_with_pickle(p, b"\x80\x02}q\x00(X\x01")
    assert "corrupt data.pkl" in _one_line_error(p)


def test_legacy_non_zip_format_error_explains_how_to_resave(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) output is refused with a
    message saying how to re-save it."""
    torch = pytest.importorskip("torch")
    p = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    msg = _one_line_error(p)
    assert "legacy" in msg and "not supported" in msg and "torch.save(torch.load(" in msg


def test_big_endian_checkpoint_error(tmp_path):
    p = tmp_path / "be.pth"
    _zip_with_pickle(p, pickle.dumps({}, protocol=2), {"byteorder": b"big"})
    assert "big-endian" in _one_line_error(p)


# ------------------------------------------------------------------ hostile sizes


def test_stride_zero_huge_tensor_is_refused_before_allocating(tmp_path):
    """A 4-element storage viewed as 10^6 x 10^6 floats through stride 0 would need 4 TB:
    refused from the declared sizes, nothing allocated (the test itself would die)."""
    path = tmp_path / "stride0.pth"
    _zip_with_pickle(path, _tensor_pickle(4, (1000000, 1000000), (0, 0)),
                     {"data/0": np.zeros(4, "<f4").tobytes()})
    assert "refusing to allocate" in _one_line_error(path)
    # A modest stride-0 view (64 KB) stays allowed: expanded tensors exist in the wild.
    _zip_with_pickle(path, _tensor_pickle(4, (128, 128), (0, 1), offset=0),
                     {"data/0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match="reads past the end"):
        load_pth(path)   # stride (0, 1) over 128 columns needs 128 elements
    _zip_with_pickle(path, _tensor_pickle(4, (4096, 4), (0, 1)),
                     {"data/0": np.arange(4, dtype="<f4").tobytes()})
    assert load_pth(path).shape == (4096, 4)


def test_zip_bomb_storage_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    """A deflated storage record that inflates 1000x is refused before it is inflated."""
    from kdsr_jax.convert import torch_io

    path = tmp_path / "bomb.pth"
    numel = 4 << 20                          # 16 MiB of zeros deflate to ~16 KB
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _tensor_pickle(numel, (numel,), (1,)))
        zf.writestr("archive/data/0", np.zeros(numel, "<f4").tobytes(),
                    compress_type=zipfile.ZIP_DEFLATED)
    calls = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, *a: calls.append(name) or real_read(self, name, *a))
    msg = _one_line_error(path)
    assert "zip bomb" in msg and "data/0" in msg
    assert "archive/data/0" not in calls                        # never inflated
    # Over the total cap: refused from the declared size alone.
    monkeypatch.setattr(torch_io, "MAX_TOTAL_BYTES", 1 << 20)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _tensor_pickle(numel, (numel,), (1,)))
        zf.writestr("archive/data/0", np.zeros(numel, "<f4").tobytes())
    assert "cap" in _one_line_error(path)
