"""scripts/convert.py end to end (subprocess): .pth -> converted dir -> .pth, and one-line
`error: ...` with exit status 1 (no traceback) for every kind of bad input."""

import collections
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from kdsr_jax.convert import torch_io

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "convert.py"


def start(*args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_cli_converts_to_directory_and_back_to_an_identical_pth(fixtures_dir, tmp_path):
    src = fixtures_dir / "gan_st_small_x2.pth"
    rc, out, err = finish(start("--input", src, "--output", tmp_path / "conv"))
    assert rc == 0, err
    assert "gan student" in out and (tmp_path / "conv" / "model.json").is_file()
    rc, out, err = finish(start("--to-torch", "--input", tmp_path / "conv",
                                "--output", tmp_path / "back.pth"))
    assert rc == 0, err
    back = torch_io.load_pth(tmp_path / "back.pth")
    ref = torch_io.load_pth(src)["params_ema"]
    for key in ("params", "params_ema"):
        assert list(back[key]) == list(ref)
        assert all(np.array_equal(back[key][k], ref[k]) for k in ref)


def _bad_inputs(fixtures_dir, tmp_path):
    good = (fixtures_dir / "classic_st_small_x2.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    not_ckpt = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_ckpt, "w") as zf:
        zf.writestr("photos/readme.txt", "hello")
    evil = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > /dev/null",))

    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("archive/version", "3\n")
    renamed = tmp_path / "renamed.pth"
    sd = collections.OrderedDict(torch_io.load_pth(fixtures_dir / "classic_st_small_x2.pth"))
    sd["G.head.0.weights"] = sd.pop("G.head.0.weight")
    torch_io.save_pth(sd, renamed)
    return {"truncated": (truncated, ""), "non-checkpoint zip": (not_ckpt, "data.pkl"),
            "os.system pickle": (evil, "system"), "renamed key": (renamed, "G.head.0.weight"),
            "missing file": (tmp_path / "nope.pth", "not found")}


def test_cli_bad_inputs_give_one_line_error_and_exit_1(fixtures_dir, tmp_path):
    cases = _bad_inputs(fixtures_dir, tmp_path)
    procs = {name: start("--input", path, "--output", tmp_path / f"out_{i}")
             for i, (name, (path, _)) in enumerate(cases.items())}
    for name, proc in procs.items():
        rc, out, err = finish(proc)
        assert rc == 1, (name, rc, err)
        assert "Traceback" not in err, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert not (tmp_path / f"out_{list(cases).index(name)}" / "model.json").exists()


def test_cli_to_torch_on_a_non_converted_directory_fails_cleanly(tmp_path):
    rc, _, err = finish(start("--to-torch", "--input", tmp_path, "--output", tmp_path / "x.pth"))
    assert rc == 1 and "Traceback" not in err and err.startswith("error: ")


def test_cli_help_documents_flags():
    rc, out, _ = finish(start("--help"))
    assert rc == 0
    for flag in ("--input", "--output", "--to-torch", "--overwrite", "--dynconv"):
        assert flag in out


# ---------------------------------------------------------------- output safety (14, 17)

def _tree_bytes(path):
    import os

    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = fh.read()
    return out


def _file_size_limited(limit, *args):
    """scripts/convert.py with RLIMIT_FSIZE (writes past `limit` bytes fail, as on a full
    disk), set in an exec wrapper."""
    wrapper = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", wrapper, sys.executable, str(SCRIPT),
                             *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_overwrite_is_refused_without_the_flag_and_atomic_with_it(fixtures_dir, tmp_path):
    from kdsr_jax import convert

    out = tmp_path / "conv"
    classic = fixtures_dir / "classic_st_small_x4.pth"
    assert finish(start("--input", classic, "--output", out))[0] == 0
    before = _tree_bytes(out)
    src = fixtures_dir / "gan_st_small_x4.pth"
    rc, _, err = finish(start("--input", src, "--output", out))
    assert rc == 1 and err.strip().splitlines() == [
        f"error: {out} already exists; pass --overwrite to replace it"]
    # A write that fails half-way (the disk fills up) keeps the old model as it was.
    rc, _, err = finish(_file_size_limited(20_000, "--input", src, "--output", out,
                                           "--overwrite"))
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: cannot write {out}: File too large")
    assert _tree_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["conv"]
    assert convert.load_converted(out)[0].spec.setting == "classic"
    rc, _, err = finish(start("--input", src, "--output", out, "--overwrite"))
    assert rc == 0, err
    assert convert.load_converted(out)[0].spec.setting == "gan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]     # no temporary left


def test_to_torch_refuses_to_replace_a_pth_without_overwrite(fixtures_dir, tmp_path):
    conv = tmp_path / "conv"
    classic = fixtures_dir / "classic_st_small_x4.pth"
    assert finish(start("--input", classic, "--output", conv))[0] == 0
    target = tmp_path / "keep.pth"
    target.write_bytes(b"precious")
    rc, _, err = finish(start("--to-torch", "--input", conv, "--output", target))
    assert rc == 1 and "pass --overwrite" in err and target.read_bytes() == b"precious"
    rc, _, err = finish(start("--to-torch", "--input", conv, "--output", target, "--overwrite"))
    assert rc == 0, err
    assert torch_io.load_pth(target)


def test_to_torch_exports_a_training_workdir_compressed_and_strict_loadable(tmp_path):
    """A training workdir exports as the official layout; the file is zip-deflated and
    torch.load + load_state_dict(strict=True) into the PyTorch twin gives our weights."""
    torch = pytest.importorskip("torch")
    from kdsr_jax import checkpoints
    sys.path.insert(0, str(REPO))   # the top-level benchmarks/ package is not installed
    from benchmarks import torch_twin
    from kdsr_jax.train import loop
    from test_train_loop import _config

    wd = tmp_path / "run"
    loop.train_and_evaluate(_config(total_steps=1), str(wd), num_devices=1, progress=False)
    out = tmp_path / "teacher.pth"
    rc, stdout, err = finish(start("--to-torch", "--input", wd, "--output", out))
    assert rc == 0, err
    assert {i.compress_type for i in zipfile.ZipFile(out).infolist()} == {zipfile.ZIP_DEFLATED}
    model, variables = checkpoints.load(wd)
    twin = torch_twin.build_twin(model.spec)
    twin.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    ref = torch_twin.twin_from_variables(model.spec, variables).state_dict()
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), ref[k].numpy(), err_msg=k)


def test_gan_export_stores_shared_weights_once_and_smaller_than_torch_save(fixtures_dir,
                                                                          tmp_path):
    """'params' and 'params_ema' hold the same arrays: one storage each (as torch.save
    does for shared storages), deflated: the round trip is smaller than the original."""
    src = fixtures_dir / "gan_st_small_x4.pth"
    conv, back = tmp_path / "conv", tmp_path / "back.pth"
    assert finish(start("--input", src, "--output", conv))[0] == 0
    assert finish(start("--to-torch", "--input", conv, "--output", back))[0] == 0
    names = zipfile.ZipFile(back).namelist()
    n_tensors = len(torch_io.load_pth(back)["params"])
    assert sum("/data/" in n for n in names) == n_tensors
    assert back.stat().st_size < 0.5 * src.stat().st_size
