"""Schedules, losses and the VGG19 import of kdsr_jax.train (reference/TRAINING.md)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from kdsr_jax.train import losses, schedules, vgg

EPOCH = 971


def test_classic_teacher_lr_halves_every_125_epochs():
    s = schedules.classic_epoch_schedule(lr=1e-4, gamma=0.5, decay_epochs=125,
                                         steps_per_epoch=EPOCH)
    # epoch e covers steps [(e-1)*971, e*971); epochs 1-124 -> 1e-4, 125 -> 5e-5, 500 -> 6.25e-6
    assert float(s(0)) == pytest.approx(1e-4)
    assert float(s(124 * EPOCH - 1)) == pytest.approx(1e-4)
    assert float(s(124 * EPOCH)) == pytest.approx(5e-5)
    assert float(s(499 * EPOCH)) == pytest.approx(6.25e-6)


def test_aniso_student_lr_has_encoder_warmup_then_sr_schedule():
    s = schedules.classic_epoch_schedule(lr=1e-4, gamma=0.5, decay_epochs=125,
                                         steps_per_epoch=EPOCH, encoder_epochs=100,
                                         lr_encoder=2e-4, gamma_encoder=0.1,
                                         decay_encoder_epochs=60)
    lr_at_epoch = lambda e: float(s((e - 1) * EPOCH))
    assert lr_at_epoch(1) == pytest.approx(2e-4)
    assert lr_at_epoch(59) == pytest.approx(2e-4)
    assert lr_at_epoch(60) == pytest.approx(2e-5)
    assert lr_at_epoch(100) == pytest.approx(2e-5)
    assert lr_at_epoch(101) == pytest.approx(1e-4)
    assert lr_at_epoch(225) == pytest.approx(5e-5)
    assert lr_at_epoch(500) == pytest.approx(1.25e-5)


def test_gan_lr_drops_only_at_final_iteration_400k():
    s = schedules.iteration_schedule(lr=1e-4, gamma=0.5, decay_steps=400_000)
    assert float(s(0)) == pytest.approx(1e-4)              # iteration 1
    assert float(s(399_998)) == pytest.approx(1e-4)        # iteration 399,999
    assert float(s(399_999)) == pytest.approx(5e-5)        # iteration 400,000


def test_kd_loss_is_batchmean_kl_without_tau_squared():
    rng = np.random.RandomState(0)
    t, s = rng.randn(3, 8).astype(np.float32), rng.randn(3, 8).astype(np.float32)
    tau = 0.15

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(t.astype(np.float64) / tau), softmax(s.astype(np.float64) / tau)
    expected = np.sum(p * (np.log(p) - np.log(q))) / 3
    assert float(losses.kd(jnp.asarray(t), jnp.asarray(s), tau)) == pytest.approx(expected, rel=1e-4)
    assert float(losses.kd(jnp.asarray(t), jnp.asarray(t), tau)) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gives_no_gradient_to_the_teacher():
    t, s = jnp.ones((2, 4)) * jnp.arange(4.0), jnp.zeros((2, 4))
    g = jax.grad(lambda a: losses.kd(a, s, 0.15))(t)
    assert float(jnp.abs(g).max()) == 0.0


def test_bce_with_logits_matches_formula():
    x = jnp.array([[-2.0, 0.5], [3.0, 0.0]])
    real = np.mean(np.log1p(np.exp(-np.asarray(x))))
    fake = np.mean(np.log1p(np.exp(np.asarray(x))))
    assert float(losses.bce_with_logits(x, True)) == pytest.approx(real, rel=1e-5)
    assert float(losses.bce_with_logits(x, False)) == pytest.approx(fake, rel=1e-5)


def test_vgg19_torch_indices_match_torchvision_features_layout():
    idx = vgg.torch_feature_indices()
    # torchvision vgg19.features: conv1_2 at 2, conv2_2 at 7, conv3_4 at 16, conv4_4 at 25,
    # conv5_4 at 34 (the last conv; 36 modules in total).
    assert [idx[n] for n in ("conv1_1", "conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")] \
        == [0, 2, 7, 16, 25, 34]


def _random_vgg_state_dict(seed=0):
    rng = np.random.RandomState(seed)
    sd, cin = {}, 3
    for block in vgg.BLOCKS:
        for name, cout in block:
            i = vgg.torch_feature_indices()[name]
            sd[f"features.{i}.weight"] = (rng.randn(cout, cin, 3, 3) * np.sqrt(2 / (9 * cin))).astype(np.float32)
            sd[f"features.{i}.bias"] = (rng.randn(cout) * 0.01).astype(np.float32)
            cin = cout
    sd["classifier.0.weight"] = np.zeros((4, 4), np.float32)   # ignored
    return sd


def test_vgg19_import_from_pth_matches_torch_pre_relu_features(tmp_path):
    """A torchvision-layout .pth (random weights, written with torch_io.save_pth) loads
    into VGG19Features whose pre-ReLU conv features equal torch's (tolerance 1e-4)."""
    torch = pytest.importorskip("torch")
    from kdsr_jax.convert import torch_io

    sd = _random_vgg_state_dict()
    path = tmp_path / "vgg19.pth"
    torch_io.save_pth({k: v for k, v in sd.items()}, path)
    params = vgg.load_torchvision_vgg19(str(path))
    x = np.random.RandomState(1).rand(1, 32, 32, 3).astype(np.float32)
    feats = vgg.VGG19Features().apply({"params": params}, jnp.asarray(x))

    t = (torch.from_numpy(x).permute(0, 3, 1, 2) - torch.tensor(vgg.IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(vgg.IMAGENET_STD).view(1, 3, 1, 1)
    want = {}
    with torch.no_grad():
        for b, block in enumerate(vgg.BLOCKS):
            for name, _ in block:
                i = vgg.torch_feature_indices()[name]
                t = torch.nn.functional.conv2d(t, torch.from_numpy(sd[f"features.{i}.weight"]),
                                               torch.from_numpy(sd[f"features.{i}.bias"]), padding=1)
                want[name] = t.permute(0, 2, 3, 1).numpy()
                t = torch.relu(t)
            if b < 4:
                t = torch.nn.functional.max_pool2d(t, 2, 2)
    for name in vgg.VGG19Features.layers:
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(np.asarray(feats[name]) / scale, want[name] / scale, atol=1e-4)


def test_vgg19_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vgg_path"):
        vgg.load_torchvision_vgg19("")
    with pytest.raises(ValueError, match="not found"):
        vgg.load_torchvision_vgg19(str(tmp_path / "nope.pth"))


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise():
    params = vgg.random_params(jax.random.PRNGKey(0))
    fn = lambda x: vgg.VGG19Features().apply({"params": params}, x)
    w = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
    a = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3))
    assert float(losses.perceptual(fn, a, a, w)) == 0.0
    assert float(losses.perceptual(fn, a, a * 0.5, w)) > 0.0


# ------------------------------------------------- training data range, validation --

def _write_pngs(folder, n, size=(40, 48)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, size + (3,)).astype(np.uint8)).save(
            folder / f"{i + 1:04d}.png")
    return folder


def test_data_first_last_select_the_official_style_1_based_inclusive_range(tmp_path):
    from kdsr_jax.data import sources

    folder = _write_pngs(tmp_path / "hr", 5)
    cfg = sources.default_data_config()
    cfg.source, cfg.folder, cfg.first, cfg.last = "folder", str(folder), 2, 4
    src = sources.make_source(cfg)
    assert [n.rsplit("/", 1)[-1] for n in src._names] == ["0002.png", "0003.png", "0004.png"]
    cfg.first, cfg.last = 1, 3450              # DF2K's range on a smaller folder: all 5
    assert len(sources.make_source(cfg)) == 5
    cfg.first, cfg.last = 6, 0
    with pytest.raises(ValueError, match="data.first=6"):
        sources.make_source(cfg)


def _eval_cfg(**kw):
    from kdsr_jax.train import config_base

    e = config_base.validation_config()
    e.num_images, e.max_side = 1, 48
    e.update(kw)
    return e


def test_iso_validation_averages_the_gaussian8_sigmas_of_the_scale():
    from kdsr_jax.evaluate import protocol
    from kdsr_jax.train import evaluation

    pairs = evaluation.make_pairs(_eval_cfg(), 4)
    assert [p.name.split(" ", 1)[1] for p in pairs] == [
        f"iso sig={s:g}" for s in protocol.GAUSSIAN8_SIGMAS[4]]
    assert pairs[0].hr.shape == (48, 48, 3) and pairs[0].lr.shape == (12, 12, 3)
    assert len(evaluation.make_pairs(_eval_cfg(), 3)) == 8          # ours at x3
    aniso = evaluation.make_pairs(_eval_cfg(protocol="aniso"), 4)
    assert [p.name.split(" ", 1)[1] for p in aniso] == [
        "aniso l1=4 l2=1.5 theta=120 noise=10"]
    # The LR is the evaluation protocol's (same key, same synthesis).
    deg = protocol.Degradation("iso_gaussian", sig=1.8)
    np.testing.assert_array_equal(pairs[0].lr, protocol.synthesize_lr(
        pairs[0].hr, deg, 4, protocol.noise_key(0, 0, 0)))


def test_validation_on_a_benchmark_folder_and_on_paired_folders(tmp_path):
    from kdsr_jax.train import evaluation

    hr = _write_pngs(tmp_path / "Set14" / "HR", 2)
    pairs = evaluation.make_pairs(_eval_cfg(folder=str(hr), num_images=0, max_side=0), 4)
    assert len(pairs) == 16 and pairs[0].hr.shape == (40, 48, 3)
    lq = _write_pngs(tmp_path / "lq", 2, size=(10, 12))
    paired = evaluation.make_pairs(_eval_cfg(protocol="paired", lr_folder=str(lq),
                                             gt_folder=str(hr), num_images=0), 4)
    assert [p.paired for p in paired] == [True, True] and paired[0].lr.shape == (10, 12, 3)
    scores, srs = evaluation.run(lambda params, pair: np.zeros(
        (pair.lr.shape[0] * 4, pair.lr.shape[1] * 4, 3), np.float32), None, paired, 4)
    assert np.isfinite(scores["psnr_y"]) and srs[0].dtype == np.uint8
