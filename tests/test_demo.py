"""scripts/demo.py (`make demo`, `make ablation`): the held-out photos, the tables, the IDR
separation measure, and the whole ablation path on a few-step tiny config (never the
full demo)."""

import importlib.util
import os
import types

import numpy as np
import pytest

from kdsr_jax.data import images, samples
from kdsr_jax.evaluate import protocol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo_script",
                                                  os.path.join(REPO, "scripts", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


# ----------------------------------------------------------------- held-out photos --

def test_heldout_photos_are_of_four_kinds_and_never_trained_on():
    held = dict(samples.HELDOUT_PHOTOS)
    train = dict(samples.TRAIN_PHOTOS)
    assert set(samples.HELDOUT_KINDS) == set(held)
    assert {"face/portrait", "fine texture", "drawing", "natural scene"} <= \
        set(samples.HELDOUT_KINDS.values())
    assert not set(held) & set(train) and not set(held.values()) & set(train.values())
    # No held-out photo is (a crop of) a training photo: compare decoded pixels.
    train_imgs = [img for _, img in samples.bundled_images("train")]
    for name, img in samples.bundled_images("heldout"):
        for t in train_imgs:
            assert img.shape != t.shape or not np.array_equal(img, t), name


def test_heldout_photos_crop_to_the_scale_and_max_side():
    photos = demo.heldout_photos(max_side=130)
    assert [p.name for p in photos] == [n for n, _ in samples.HELDOUT_PHOTOS]
    for p in photos:
        assert p.hr.shape == (128, 128, 3) and p.hr.dtype == np.uint8
    whole = demo.heldout_photos()
    chelsea = [p for p in whole if p.name == "chelsea"][0]
    assert chelsea.hr.shape == (300, 448, 3)   # 300 x 451 cropped to multiples of 4


# ------------------------------------------------------------------------- tables --

def _scores(methods, n_photos, n_degs):
    rng = np.random.default_rng(0)
    return {m: np.stack([20 + i + rng.random((n_photos, n_degs)),
                         rng.random((n_photos, n_degs))], -1) for i, m in enumerate(methods)}


def test_heldout_table_has_one_row_per_photo_and_the_gain_over_bicubic():
    photos = demo.heldout_photos(max_side=128)
    scores = _scores(["bicubic", "teacher", demo.STUDENT_KD], len(photos), 8)
    table = demo.format_heldout_table(scores, photos)
    lines = table.splitlines()
    for p in photos:
        row = [line for line in lines if line.startswith(p.name)]
        assert len(row) == 1 and p.kind in row[0]
        i = [q.name for q in photos].index(p.name)
        gain = scores[demo.STUDENT_KD][i, :, 0].mean() - scores["bicubic"][i, :, 0].mean()
        assert row[0].split()[-1] == f"{gain:+.2f}"
    mean_row = [line for line in lines if line.startswith("mean PSNR-Y")][0].split()
    assert mean_row[2] == f"{scores['bicubic'][..., 0].mean():.2f}"
    gain = scores[demo.STUDENT_KD][..., 0].mean() - scores["bicubic"][..., 0].mean()
    assert mean_row[-1] == f"{gain:+.2f}"


def test_ablation_table_rows_are_the_kernels_and_kd_minus_no_kd():
    methods = ["bicubic", "teacher", demo.STUDENT_NO_KD, demo.STUDENT_KD]
    degs = demo.ABLATION_DEGRADATIONS
    scores = _scores(methods, 3, len(degs))
    lines = demo.format_ablation_table(scores, degs).splitlines()
    assert [m in lines[0] for m in methods] == [True] * 4
    body = [line for line in lines if not line.startswith(("-", "kernel"))]
    assert [line.startswith(d.label) for line, d in zip(body, degs)] == [True] * len(degs)
    assert body[-1].startswith("mean")
    for g, line in enumerate(body[:-1]):
        diff = scores[demo.STUDENT_KD][:, g, 0].mean() - scores[demo.STUDENT_NO_KD][:, g, 0].mean()
        assert line.split()[-1] == f"{diff:+.2f}"
    assert any(d.noise > 0 and d.blur_type == "aniso_gaussian" for d in degs)
    assert sum(d.blur_type == "iso_gaussian" for d in degs) >= 2


# ----------------------------------------------------------------- IDR separation --

def test_nearest_centroid_accuracy_is_one_for_separated_classes_and_chance_for_noise():
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 50)
    groups = np.repeat(np.arange(5), 40)
    separated = labels[:, None] * 10.0 + rng.normal(size=(200, 6))
    assert demo.nearest_centroid_accuracy(separated, labels, groups) == 1.0
    noise = rng.normal(size=(200, 6))
    assert demo.nearest_centroid_accuracy(noise, labels, groups) < 0.45
    # Leave-one-group-out: each group is judged on the other groups' centroids only.
    with pytest.raises(ValueError, match="only in group 1"):
        demo.nearest_centroid_accuracy(np.zeros((3, 2)), np.array([0, 0, 1]),
                                       np.array([0, 1, 1]))


def test_centring_per_patch_removes_the_content_and_keeps_the_blur_direction():
    patch = np.repeat(np.arange(3), 2)                      # 3 contents x 2 blurs
    content = np.array([[100.0, 0], [0, 100], [-50, -50]])[patch]
    blur = np.array([[-1.0, 1], [1, -1]])[np.tile([0, 1], 3)]
    centred = demo.centre_per_patch(content + blur, patch)
    np.testing.assert_allclose(centred, blur)
    labels, groups = np.tile([0, 1], 3), patch
    assert demo.nearest_centroid_accuracy(content + blur, labels, groups) < 1.0
    assert demo.nearest_centroid_accuracy(centred, labels, groups) == 1.0


def test_pca_2d_finds_the_dominant_direction():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(100, 1))
    x = np.concatenate([3 * t, -3 * t, 0.01 * rng.normal(size=(100, 3))], 1)
    xy, explained = demo.pca_2d(x)
    assert xy.shape == (100, 2) and explained[0] > 0.99
    tc = t[:, 0] - t.mean()
    np.testing.assert_allclose(np.abs(xy[:, 0]), np.abs(tc) * np.sqrt(18), rtol=1e-3, atol=1e-3)


def test_idr_patches_label_every_patch_with_its_sigma_and_photo():
    photos = demo.heldout_photos(max_side=128)[:2]
    d = demo.idr_patches(photos, sigmas=(1.0, 3.0), patch=64, per_photo=3)
    assert d.lr.shape == (12, 16, 16, 3) and d.hr.shape == (12, 64, 64, 3)
    assert d.sigma_class.tolist() == [0, 1] * 6 and d.photo.tolist() == [0] * 6 + [1] * 6
    assert d.patch.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    np.testing.assert_array_equal(d.hr[0], d.hr[1])         # one patch, two blurs
    # The wider blur leaves less detail in the same patch.
    assert np.abs(np.diff(d.lr[1], axis=0)).mean() < np.abs(np.diff(d.lr[0], axis=0)).mean()
    with pytest.raises(ValueError, match="smaller than"):
        demo.idr_patches(photos, patch=256)


# --------------------------------------------------------- stages and the whole path --

def test_no_kd_student_differs_from_the_demo_student_only_in_the_kd_weight():
    _, student = demo.demo_configs()
    ablated = demo.no_kd(student)
    assert ablated.kd.weight == 0.0 and student.kd.weight > 0
    ablated.kd.weight = student.kd.weight
    assert ablated.to_dict() == student.copy_and_resolve_references().to_dict()


def test_a_stage_stopped_early_is_reported_as_resumable(monkeypatch, tmp_path):
    monkeypatch.setattr(demo.loop, "train_and_evaluate",
                        lambda cfg, workdir, num_devices=None: types.SimpleNamespace(step=7))
    cfg = types.SimpleNamespace(total_steps=10)
    with pytest.raises(demo.Interrupted, match="step 7/10.*again to resume"):
        demo.train_stage("teacher", cfg, str(tmp_path))


def test_cli_refuses_a_max_side_below_the_idr_patch(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--max-side", "64"])
    assert exc.value.code == 2 and "--max-side" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_path_end_to_end_on_a_few_step_tiny_config(tmp_path):
    teacher, student = demo.demo_configs()
    for c in (teacher, student):
        c.model.update(dict(n_feats=8, n_blocks=1, n_resblocks=1))
        c.batch_size, c.total_steps, c.eval_every_steps = 2, 2, 0
        c.data.worker_threads = 0
    result = demo.run(str(tmp_path), teacher, student, ablation=True, max_side=128,
                      num_devices=1)
    n = len(samples.HELDOUT_PHOTOS)
    assert list(result["heldout"]) == ["bicubic", "teacher", demo.STUDENT_KD]
    assert result["heldout"]["bicubic"].shape == (n, 8, 2)
    assert list(result["ablation"]) == ["bicubic", "teacher", demo.STUDENT_NO_KD,
                                        demo.STUDENT_KD]
    for m, s in result["ablation"].items():
        assert s.shape == (n, len(demo.ABLATION_DEGRADATIONS), 2) and np.isfinite(s).all(), m
    # Same teacher, same data, equal steps: the two students differ (KD acts) but
    # bicubic is the protocol's own number for the same LR.
    assert not np.array_equal(result["ablation"][demo.STUDENT_KD],
                              result["ablation"][demo.STUDENT_NO_KD])
    photo = demo.heldout_photos(128)[0]
    deg = demo.ABLATION_DEGRADATIONS[0]
    lr = protocol.synthesize_lr(photo.hr, deg, 4, protocol.noise_key(0, 0, 0))
    bic = protocol.score_synthetic(protocol.bicubic_upscale(lr, 4), photo.hr, 4)
    np.testing.assert_allclose(result["ablation"]["bicubic"][0, 0], bic)
    assert set(result["separation"]) == {"teacher", demo.STUDENT_KD, demo.STUDENT_NO_KD}
    for row in result["separation"].values():
        assert tuple(row) == demo.IDR_VIEWS + (demo.BLUR_SHARE,)
        assert all(0.0 <= a <= 1.0 for a in row.values())
    assert images.probe_image(result["figure"])[1] > 400
    for name in ("heldout.txt", "ablation.txt"):
        text = (tmp_path / name).read_text()
        assert "mean" in text
    assert "nearest-centroid" in (tmp_path / "ablation.txt").read_text()


def test_separation_table_lists_both_views_and_the_blur_share():
    row = {demo.IDR_VIEWS[0]: 1 / 6, demo.IDR_VIEWS[1]: 0.5, demo.BLUR_SHARE: 1.2e-6}
    lines = demo.format_separation({"teacher": row}).splitlines()
    assert lines[-1].split() == ["teacher", "17%", "50%", "1.2e-06"]
