"""Benchmark protocols and scripts/evaluate.py (EVALUATION.md §1.2-§1.5, §2.1-§2.3) on
small real photos with the tiny preset."""

import importlib.util
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from kdsr_jax import evaluate
from kdsr_jax.evaluate import protocol, tiling
from conftest import make_tiny_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"
_spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """<root>/Set5/HR (2 photos, one not a multiple of 4) and <root>/Set14/HR (1)."""
    root = tmp_path_factory.mktemp("bench")
    for name, crops in {"Set5": [("coffee", 50, 66), ("chelsea", 64, 60)],
                        "Set14": [("astronaut", 60, 64)]}.items():
        (root / name / "HR").mkdir(parents=True)
        for photo, h, w in crops:
            img = getattr(skimage.data, photo)()[40:40 + h, 60:60 + w, :3]
            Image.fromarray(img).save(root / name / "HR" / f"{photo}.png")
    return root


def test_deterministic_lr_matches_official_fixture(fixtures_dir):
    """deg_srmd_iso_sig2.6_x4 + deg_srmd_aniso_l3.5_l1.5_t30_x4 (`out_lr`): exact, except
    <= 0.1% of all their pixels may differ by exactly 1/255 (fixture README)."""
    diffs = []
    for fname, deg in [("deg_srmd_iso_sig2.6_x4.npz", protocol.Degradation(sig=2.6)),
                       ("deg_srmd_aniso_l3.5_l1.5_t30_x4.npz",
                        protocol.aniso_degradation(3.5, 1.5, 30.0, 0.0))]:
        d = np.load(fixtures_dir / fname)
        for b in range(d["in_hr"].shape[0]):
            hr = np.round(d["in_hr"][b].transpose(1, 2, 0) * 255).astype(np.uint8)
            lr = protocol.synthesize_lr(hr, deg, 4, protocol.noise_key(0, 0, 0))
            diffs.append(np.abs(lr - d["out_lr"][b].transpose(1, 2, 0)).ravel())
    diff = np.concatenate(diffs)
    assert diff.max() <= 1 / 255 + 1e-6
    assert np.mean(diff > 1e-6) <= 1e-3


def test_gaussian8_sigmas_are_the_papers():
    assert [d.sig for d in protocol.iso_degradations(4)] == pytest.approx(
        [1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2])
    assert [d.sig for d in protocol.iso_degradations(2)] == pytest.approx(
        [0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    with pytest.raises(ValueError, match="x2 and x4"):
        protocol.iso_degradations(3)


def test_hr_is_cropped_top_left_to_a_multiple_of_the_scale():
    img = np.arange(50 * 66 * 3).reshape(50, 66, 3)
    np.testing.assert_array_equal(protocol.crop_to_scale(img, 4), img[:48, :64])


def test_iso_cli_prints_table_and_writes_json_csv_with_per_dataset_means(
        tiny, data_root, tmp_path, capsys):
    ckpt, model, v = tiny
    out = tmp_path / "res" / "iso"
    rc = evaluate_script.main(["--checkpoint", ckpt, "--data", str(data_root),
                               "--protocol", "iso", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    header = [l for l in text.splitlines() if l.startswith("Method")][0]
    assert header.split("|")[1].strip() == "Set5" and header.split("|")[2].strip() == "Set14"
    assert any(l.startswith("Bicubic") for l in text.splitlines())
    assert any(l.startswith("KDSR") for l in text.splitlines())
    res = json.loads((tmp_path / "res" / "iso.json").read_text())
    rows = res["per_image"]
    assert len(rows) == 3 * 8                     # every image x every sigma
    for ds in ("Set5", "Set14"):
        mine = [r["psnr"] for r in rows if r["dataset"] == ds]
        assert res["rows"]["KDSR"][ds]["psnr"] == pytest.approx(np.mean(mine), abs=1e-9)
        bic = [r["bicubic_ssim"] for r in rows if r["dataset"] == ds]
        assert res["rows"]["Bicubic"][ds]["ssim"] == pytest.approx(np.mean(bic), abs=1e-9)
    csv_lines = (tmp_path / "res" / "iso.csv").read_text().splitlines()
    assert csv_lines[0] == "method,dataset,psnr,ssim" and len(csv_lines) == 5
    # One per-image value recomputed independently: unpadded forward + metric.
    from kdsr_jax.data import images
    hr = protocol.crop_to_scale(images.load_image(data_root / "Set5" / "HR" / "chelsea.png"), 4)
    deg = protocol.iso_degradations(4)[3]
    lr = protocol.synthesize_lr(hr, deg, 4, protocol.noise_key(0, 1, 3))
    sr = np.asarray(model.apply(v, jnp.asarray(lr[None])))[0]
    row = [r for r in rows if r["image"] == "chelsea.png" and r["degradation"] == deg.label][0]
    assert row["psnr"] == pytest.approx(evaluate.psnr_y(sr, hr, 4), abs=1e-3)
    assert row["ssim"] == pytest.approx(evaluate.ssim_y(sr, hr, 4), abs=1e-5)


def test_aniso_with_noise_is_deterministic_and_uses_the_given_kernel(tiny, data_root):
    _, model, v = tiny
    runner = tiling.Runner(model, v)
    ds = protocol.discover_datasets(str(data_root), ["Set14"])
    deg = protocol.aniso_degradation(3.5, 1.5, 30, 10)
    a = protocol.evaluate_synthetic(runner, ds, [deg], with_bicubic=False)
    b = protocol.evaluate_synthetic(runner, ds, [deg], with_bicubic=False)
    assert a["rows"] == b["rows"]
    assert a["degradations"] == ["aniso l1=3.5 l2=1.5 theta=30 noise=10"]
    assert math.isfinite(a["rows"]["KDSR"]["Set14"][0])


def test_paired_protocol_crops_gt_and_uses_basicsr_metrics(tiny, tmp_path):
    _, model, v = tiny
    lr_dir, gt_dir = tmp_path / "lr", tmp_path / "gt"
    lr_dir.mkdir()
    gt_dir.mkdir()
    gt = skimage.data.coffee()[:90, :100]
    lr = gt[::4, ::4][:20, :22]                    # GT larger than 4 x LR: cropped
    Image.fromarray(lr).save(lr_dir / "0001.png")
    Image.fromarray(gt).save(gt_dir / "0001_gt.png")
    res = protocol.evaluate_paired(tiling.Runner(model, v), str(lr_dir), str(gt_dir))
    sr = np.asarray(model.apply(v, jnp.asarray(lr[None] / 255.0, jnp.float32)))[0]
    sr8 = np.round(np.clip(sr, 0, 1) * 255).astype(np.uint8)
    p, s = res["rows"]["KDSR"]["paired"]
    assert p == pytest.approx(evaluate.psnr_y_basicsr(sr8, gt[:80, :88]), abs=1e-3)
    assert s == pytest.approx(evaluate.ssim_y_basicsr(sr8, gt[:80, :88]), abs=1e-4)


@pytest.mark.parametrize("argv,msg", [
    (["--data", "/nonexistent"], "error: data folder not found"),
    (["--datasets", "Urban100"], "error: dataset(s) Urban100 not found"),
    (["--protocol", "paired"], "error: --protocol paired needs --lr DIR and --gt DIR"),
])
def test_bad_arguments_give_one_line_errors(tiny, data_root, capsys, argv, msg):
    ckpt, _, _ = tiny
    base = ["--checkpoint", ckpt, "--data", str(data_root)]
    assert evaluate_script.main(base + argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(msg) and "\n" not in err


def test_unusable_images_are_skipped_with_reasons_and_the_rest_scored(tiny, data_root,
                                                                      tmp_path, capsys):
    """A 12x13 HR (4x4 after the x4 crop and shave: smaller than the SSIM window) and a
    truncated file in Set5: named with their reasons, the other images scored exactly as
    without them, the table says how many were skipped, exit status 0."""
    import shutil
    ckpt, _, _ = tiny
    root = tmp_path / "bench"
    shutil.copytree(data_root, root)
    Image.fromarray(skimage.data.coffee()[:12, :13]).save(root / "Set5" / "HR" / "small.png")
    good = (root / "Set5" / "HR" / "coffee.png").read_bytes()
    (root / "Set5" / "HR" / "broken.png").write_bytes(good[:300])
    base = ["--checkpoint", ckpt, "--protocol", "iso"]
    assert evaluate_script.main(base + ["--data", str(data_root),
                                        "--output", str(tmp_path / "clean")]) == 0
    capsys.readouterr()
    assert evaluate_script.main(base + ["--data", str(root),
                                        "--output", str(tmp_path / "dirty")]) == 0
    text = capsys.readouterr().out
    assert "2 image(s) skipped" in text
    assert "Set5/small.png: image (4, 4) smaller than the 11x11 SSIM window" in text
    assert "Set5/broken.png: truncated PNG" in text
    clean = json.loads((tmp_path / "clean.json").read_text())
    dirty = json.loads((tmp_path / "dirty.json").read_text())
    assert dirty["rows"] == clean["rows"]                 # same means over the same images
    assert dirty["per_image"] == clean["per_image"]
    assert {r["image"] for r in dirty["skipped"]} == {"small.png", "broken.png"}


def test_paired_skips_a_pair_whose_gt_is_too_small(tiny, tmp_path, capsys):
    ckpt, _, _ = tiny
    lr_dir, gt_dir = tmp_path / "lr", tmp_path / "gt"
    lr_dir.mkdir()
    gt_dir.mkdir()
    gt = skimage.data.coffee()[:80, :88]
    Image.fromarray(gt[::4, ::4]).save(lr_dir / "0001.png")
    Image.fromarray(gt).save(gt_dir / "0001.png")
    Image.fromarray(gt[::4, ::4]).save(lr_dir / "0002.png")
    Image.fromarray(gt[:40, :40]).save(gt_dir / "0002.png")
    assert evaluate_script.main(["--checkpoint", ckpt, "--protocol", "paired",
                                 "--lr", str(lr_dir), "--gt", str(gt_dir)]) == 0
    text = capsys.readouterr().out
    assert "1 image(s) skipped" in text and "paired/0002.png: GT" in text


def test_nothing_scorable_is_a_one_line_error(tiny, tmp_path, capsys):
    ckpt, _, _ = tiny
    (tmp_path / "D" / "HR").mkdir(parents=True)
    Image.fromarray(skimage.data.coffee()[:12, :13]).save(tmp_path / "D" / "HR" / "s.png")
    assert evaluate_script.main(["--checkpoint", ckpt, "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]   # after the progress bar
    assert err.startswith("error: no image could be scored") and "s.png" in err


@pytest.mark.parametrize("argv,msg", [
    (["--max-images", "-1"], "error: --max-images must be >= 0 (got -1)"),
    (["--batch-size", "0"], "error: --batch-size must be >= 1 (got 0)"),
    (["--noise", "nan"], "error: --noise must be a finite number (got nan)"),
    (["--protocol", "aniso", "--lambda1", "0"], "error: --lambda1 must be > 0 (got 0)"),
])
def test_every_number_is_checked(tiny, data_root, capsys, argv, msg):
    ckpt, _, _ = tiny
    assert evaluate_script.main(["--checkpoint", ckpt, "--data", str(data_root)] + argv) == 1
    assert capsys.readouterr().err.strip() == msg


def test_save_images_writes_every_sr_image_and_outputs_are_not_replaced(tiny, data_root,
                                                                        tmp_path, capsys):
    from kdsr_jax.data import images

    ckpt, model, v = tiny
    out = tmp_path / "sr"
    argv = ["--checkpoint", ckpt, "--data", str(data_root), "--datasets", "Set14",
            "--protocol", "aniso", "--noise", "0", "--no-bicubic", "--save-images", str(out),
            "--output", str(tmp_path / "res")]
    assert evaluate_script.main(argv) == 0
    deg = protocol.aniso_degradation(3.5, 1.5, 30, 0)
    path = out / "Set14" / "aniso_l1_3.5_l2_1.5_theta_30" / "astronaut.png"
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == [path.relative_to(out)]
    hr = protocol.crop_to_scale(images.load_image(data_root / "Set14" / "HR" / "astronaut.png"), 4)
    lr = protocol.synthesize_lr(hr, deg, 4, protocol.noise_key(0, 0, 0))
    sr = np.asarray(model.apply(v, jnp.asarray(lr[None])))[0]
    want = np.floor(np.clip(sr, 0, 1) * 255 + 0.5)
    assert np.abs(images.load_image(path).astype(int) - want).max() <= 1
    capsys.readouterr()
    # A second run refuses to replace the report and the images without --overwrite.
    before = path.read_bytes()
    assert evaluate_script.main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'res.json'} already exists (and 1 more); pass --overwrite to "
        "replace it")
    assert evaluate_script.main(argv[:-2]) == 1
    assert "astronaut.png already exists" in capsys.readouterr().err
    assert evaluate_script.main(argv + ["--overwrite"]) == 0
    assert path.read_bytes() == before                     # deterministic: same image
