"""scripts/upscale.py: tiled student upscaling of files/folders, alpha and 16-bit
handling, atomic outputs and one-line errors (tiny preset, converted checkpoint)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kdsr_jax.data import images
from kdsr_jax.evaluate import protocol
from conftest import make_tiny_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "upscale.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("upscale_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


upscale = _load_script()


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory, kind="teacher", seed=1)[0]


def _photo(h=40, w=44):
    import skimage.data
    return skimage.data.coffee()[100:100 + h, 200:200 + w]


def test_folder_of_png_jpg_gray_rgba_16bit_is_upscaled(tmp_path, student_ckpt, capsys):
    ckpt, model, v = student_ckpt
    src = tmp_path / "in"
    src.mkdir()
    rgb = _photo()
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rgb).save(src / "b.jpg", quality=95)
    Image.fromarray(rgb[..., 1]).save(src / "c_gray.png")
    alpha = np.tile(np.linspace(0, 255, 44, dtype=np.uint8), (40, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src / "d_rgba.png")
    rgb16 = rgb.astype(np.uint16) * 257 + 3
    images.save_png(src / "e16.png", rgb16 / 65535.0, bit_depth=16)
    out = tmp_path / "out"
    assert upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out),
                         "--tile", "0"]) == 0
    names = sorted(os.listdir(out))
    assert names == ["a_out.png", "b_out.png", "c_gray_out.png", "d_rgba_out.png",
                     "e16_out.png"]
    # Output of the RGB file = the model's forward, quantised to 8 bits.
    ref = np.asarray(model.apply(v, jnp.asarray(rgb[None] / 255.0, jnp.float32)))[0]
    got = images.load_image(out / "a_out.png")
    assert got.shape == (160, 176, 3)
    assert np.abs(got.astype(int) - np.round(np.clip(ref, 0, 1) * 255)).max() <= 1
    rgba, a, bits = images.load_image_full(out / "d_rgba_out.png")
    assert a is not None and bits == 8
    want_a = np.clip(protocol.bicubic_upscale(alpha[..., None] / 255.0, 4)[..., 0], 0, 1)
    assert np.abs(a - want_a).max() <= 1 / 255 + 1e-6
    assert images.load_image_full(out / "e16_out.png")[2] == 16
    assert images.load_image(out / "c_gray_out.png").shape == (160, 176, 3)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out / "a_out.png").st_mode & 0o777 == 0o666 & ~umask


def test_tiled_cli_output_equals_untiled(tmp_path, student_ckpt):
    ckpt, _, _ = student_ckpt
    src = tmp_path / "x.png"
    Image.fromarray(_photo(70, 90)).save(src)
    upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(tmp_path / "u"),
                  "--tile", "0"])
    upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(tmp_path / "t"),
                  "--tile", "32", "--tile-pad", "12"])
    a = images.load_image(tmp_path / "u" / "x_out.png").astype(int)
    b = images.load_image(tmp_path / "t" / "x_out.png").astype(int)
    assert np.abs(a - b).max() <= 1   # float rounding may flip one 8-bit level


@pytest.mark.parametrize("case", ["missing", "empty_folder", "corrupt"])
def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, student_ckpt, capsys, case):
    ckpt, _, _ = student_ckpt
    if case == "missing":
        src = tmp_path / "nope.png"
    elif case == "empty_folder":
        src = tmp_path / "empty"
        src.mkdir()
    else:
        src = tmp_path / "bad.png"
        good = tmp_path / "good.png"
        Image.fromarray(_photo()).save(good)
        src.write_bytes(good.read_bytes()[:200])   # truncated PNG
    out = tmp_path / "out"
    assert upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists() or not [n for n in os.listdir(out) if n.endswith(".png")]


def test_teacher_checkpoint_is_refused(tmp_path, teacher_ckpt, capsys):
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    rc = upscale.main(["--checkpoint", teacher_ckpt, "-i", str(tmp_path / "a.png"),
                       "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error: ") and "teacher" in err and "\n" not in err


def test_unwritable_output_folder_is_a_clear_error(tmp_path, student_ckpt, capsys):
    ckpt, _, _ = student_ckpt
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")   # a file where the output folder should go (works as root too)
    rc = upscale.main(["--checkpoint", ckpt, "-i", str(tmp_path / "a.png"),
                       "-o", str(blocker / "out")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error: cannot write to output folder")
    assert "\n" not in err


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    dst = tmp_path / "o.png"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        upscale.write_png_atomic(str(dst), np.zeros((8, 8, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_cli_runs_as_a_program(tmp_path, student_ckpt):
    ckpt, _, _ = student_ckpt
    r = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", ckpt, "-i",
                        str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: input not found: {tmp_path / 'missing.png'}"


def test_folder_keeps_going_past_bad_images_and_keeps_every_kind_of_alpha(
        tmp_path, student_ckpt, capsys):
    """A truncated file and an animated PNG are named with their reason and skipped; the
    rest are written (exit 0); alpha from a tRNS colour and a palette survives."""
    ckpt, _, _ = student_ckpt
    src = tmp_path / "in"
    src.mkdir()
    rgb = _photo(24, 28)
    rgb[:4, :4] = (1, 2, 3)
    Image.fromarray(rgb).save(src / "a_trns.png", transparency=(1, 2, 3))
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(src / "b_pal.png", transparency=0)
    good = (src / "a_trns.png").read_bytes()
    (src / "c_cut.png").write_bytes(good[:len(good) // 2])
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1].copy())]
    frames[0].save(src / "d_anim.png", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    assert upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out),
                         "--tile", "0"]) == 0
    cap = capsys.readouterr()
    errors = [l[l.index("error: "):] for l in cap.err.splitlines() if "error: " in l]
    assert len(errors) == 2
    assert str(src / "c_cut.png") in errors[0] and "truncated" in errors[0]
    assert str(src / "d_anim.png") in errors[1] and "animated PNG with 2 frames" in errors[1]
    assert "upscaled 2 of 4 image(s)" in cap.out and "skipped 2" in cap.out
    assert sorted(os.listdir(out)) == ["a_trns_out.png", "b_pal_out.png"]
    _, a, _ = images.load_image_full(out / "a_trns_out.png")
    assert a is not None and a[:8, :8].max() < 0.5 and a[-8:, -8:].min() == 1.0
    _, a, _ = images.load_image_full(out / "b_pal_out.png")
    index = np.asarray(pal)
    assert a is not None and a.shape == (96, 112) and (a < 1).any() == (index == 0).any()


def test_folder_where_nothing_can_be_upscaled_exits_non_zero(tmp_path, student_ckpt, capsys):
    ckpt, _, _ = student_ckpt
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(b"not a png")
    (src / "y.jpg").write_bytes(b"")
    assert upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(tmp_path / "o")]) == 1
    cap = capsys.readouterr()
    assert "upscaled 0 of 2" in cap.out and cap.err.count("error: ") == 2


def test_list_models_needs_no_other_flag(capsys):
    assert upscale.main(["--list-models"]) == 0
    assert "KDSR-GANV2-x4" in capsys.readouterr().out


# ------------------------------------------------------------ never destroy inputs (14)

def _pngs(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_output_into_the_input_folder_never_replaces_an_input(tmp_path, student_ckpt, capsys):
    ckpt, _, _ = student_ckpt
    for name in ("a.png", "b.png"):
        Image.fromarray(_photo()).save(tmp_path / name)
    before = _pngs(tmp_path)
    # The empty suffix would write a.png over a.png: refused, even with --overwrite.
    for extra in ([], ["--overwrite"]):
        rc = upscale.main(["--checkpoint", ckpt, "-i", str(tmp_path), "-o", str(tmp_path),
                           "--suffix", "", "--tile", "0", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err == (f"error: the output {tmp_path / 'a.png'} would replace "
                                   f"the input {tmp_path / 'a.png'}; choose another -o "
                                   "folder or --suffix")
        assert _pngs(tmp_path) == before
    # The default suffix writes next to the inputs.
    assert upscale.main(["--checkpoint", ckpt, "-i", str(tmp_path), "-o", str(tmp_path),
                         "--tile", "0"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_out.png", "b.png", "b_out.png"]
    assert {n: _pngs(tmp_path)[n] for n in before} == before


def test_existing_outputs_need_overwrite_and_clashing_names_are_refused(tmp_path,
                                                                        student_ckpt, capsys):
    ckpt, _, _ = student_ckpt
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.fromarray(_photo()).save(src / "a.png")
    (out / "a_out.png").write_bytes(b"earlier result")
    rc = upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out), "--tile", "0"])
    assert rc == 1 and capsys.readouterr().err.strip() == (
        f"error: {out / 'a_out.png'} already exists; pass --overwrite to replace it")
    assert (out / "a_out.png").read_bytes() == b"earlier result"
    assert upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out), "--tile", "0",
                         "--overwrite"]) == 0
    assert images.load_image(out / "a_out.png").shape == (160, 176, 3)
    Image.fromarray(_photo()).save(src / "a.jpg")        # a.png and a.jpg -> a_out.png
    rc = upscale.main(["--checkpoint", ckpt, "-i", str(src), "-o", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "would both be written to" in err and "\n" not in err


def test_tiled_image_reports_per_tile_progress(student_ckpt):
    from kdsr_jax.evaluate import tiling

    ckpt, model, v = student_ckpt
    runner = tiling.Runner(model, v)
    calls = []
    runner.upscale(_photo(70, 90).astype(np.float32) / 255.0, tile=32, tile_pad=8,
                   progress=lambda done, total: calls.append((done, total)))
    n = len(list(tiling.tile_windows(70, 90, 32, 8)))
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]


@pytest.mark.parametrize("script", ["upscale.py", "evaluate.py", "convert.py", "train.py",
                                    "benchmark.py", "demo.py"])
def test_every_cli_help_reads_whole(script):
    """--help shows the script's whole description: its first paragraph ends with a
    full stop (no sentence cut off) and every line of it appears in the help."""
    path = REPO / "scripts" / script
    r = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    doc = importlib.util.spec_from_file_location("m", path)
    import ast

    text = ast.get_docstring(ast.parse(path.read_text()))
    first = text.split("\n\n")[0]
    assert first.rstrip().endswith((".", ":")), first
    help_text = " ".join(r.stdout.split())
    for line in first.splitlines():
        assert " ".join(line.split()) in help_text, (script, line)
