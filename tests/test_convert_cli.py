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
