"""GAN-side steps (reference/TRAINING.md §2.3-2.5): one step of each stage, tiny sizes."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from kdsr_jax import convert, models
from kdsr_jax.train import loop, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(n_feats=8, n_blocks=1, n_resblocks=1)


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _config(name, tmp_path, arg="demo"):
    c = load_config(name, arg)
    c.model.update(dict(preset="tiny", **SIZES))
    c.batch_size = 2
    # Small GT (160 px keeps every intermediate of the second-order pipeline > 10 px).
    c.degradation.gt_input_size = 160
    c.degradation.gt_size = 64
    c.degradation.queue_size = 4     # two batches of 2
    c.patch_size = 160
    if name == "gan":
        c.discriminator.num_feat = 8
        c.perceptual.vgg_path = "random"
    for role, kind in (("teacher", "teacher"), ("student", "student")):
        if role in c and name != "gan_teacher":
            spec = models.preset("tiny", kind=kind, setting="gan", **SIZES)
            path = tmp_path / role
            if not path.exists():
                convert.save_converted(path, spec, models.init_variables(spec, jax.random.PRNGKey(3)))
            c[role] = str(path)
    return c


def _one_step(config):
    spec = loop.model_spec(config)
    step_fn, state, frozen = loop.build(config, spec, jax.random.PRNGKey(0))
    before = jax.device_get(state)
    mesh = sharding.make_mesh(1)
    fn = sharding.jit_step(step_fn, mesh)
    hr = np.random.RandomState(0).randint(0, 256, (2, 160, 160, 3)).astype(np.uint8)
    state, metrics = fn(sharding.replicate(state, mesh), sharding.global_batch({"hr": hr}, mesh),
                        sharding.replicate(frozen, mesh))
    return before, jax.device_get(state), jax.device_get(metrics)


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


def test_gan_teacher_step_updates_g_and_ema_with_decay_0_999_and_fills_the_pool(tmp_path):
    before, after, metrics = _one_step(_config("gan_teacher", tmp_path))
    assert int(after.pool["count"]) == 2 and after.pool["gt"].shape == (4, 64, 64, 3)
    assert np.isfinite(metrics["loss"]) and metrics["lr"] == pytest.approx(1e-4)
    expected = jax.tree.map(lambda e, p: 0.999 * e + 0.001 * p, before.ema_params, after.params)
    _leaves_close(after.ema_params, expected, rtol=1e-6, atol=1e-7)


def test_gan_student_step_is_l1_plus_kd_from_the_teachers_generator(tmp_path):
    config = _config("gan_student", tmp_path)
    before, after, metrics = _one_step(config)
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["kd"], rtol=1e-6)
    from kdsr_jax import checkpoints

    _, t_vars = checkpoints.load(config.teacher)
    _leaves_close(before.params["G"], t_vars["params"]["G"], rtol=0, atol=0)
    assert metrics["lr"] == pytest.approx(2e-4)


@pytest.mark.parametrize("variant", ["demo", "demo,v2"])
def test_kdsrgan_step_updates_g_then_d_with_all_four_g_losses(tmp_path, variant):
    before, after, metrics = _one_step(_config("gan", tmp_path, variant))
    for k in ("l1", "kd", "perceptual", "g_gan", "d_real", "d_fake"):
        assert np.isfinite(metrics[k]) and metrics[k] > 0, k
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["kd"] +
                               metrics["perceptual"] + metrics["g_gan"], rtol=1e-5)
    moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(before.d_params, after.d_params) > 0
    assert moved(before.d_spectral, after.d_spectral) > 0
    assert moved(before.params, after.params) > 0
    assert int(after.d_opt_state.count) == 1


@pytest.mark.slow
def test_perceptual_weight_0_needs_no_vgg_file(tmp_path):
    """An unused loss needs no weights: weight 0 and no vgg_path build and step."""
    config = _config("gan", tmp_path)
    config.perceptual.vgg_path = ""
    config.perceptual.weight = 0.0
    _, _, metrics = _one_step(config)        # builds (no VGG19 loaded) and steps
    assert metrics["perceptual"] == 0.0
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["kd"] + metrics["g_gan"],
                               rtol=1e-5)
    config.perceptual.weight = 1.0
    with pytest.raises(ValueError, match="perceptual.weight=0 to train without it"):
        loop.build(config, loop.model_spec(config), jax.random.PRNGKey(0))
