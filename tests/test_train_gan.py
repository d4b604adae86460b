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


def _config(name, tmp_path, arg="demo", groups=2):
    c = load_config(name, arg)
    c.model.update(dict(preset="tiny", **SIZES))
    c.batch_size = 2
    # Small GT (160 px keeps every intermediate of the second-order pipeline > 10 px).
    c.degradation.gt_size = 64
    # groups=2: two groups of 1, each with its own pool of two pairs; groups=1: one
    # group of 2 with a pool of 4 (compiles faster: no loop over groups).
    c.degradation.group_size = 2 // groups
    c.degradation.queue_size = 2 * c.degradation.group_size
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


def _one_step(config, n_devices=1, n_steps=1):
    spec = loop.model_spec(config)
    step_fn, state, frozen = loop.build(config, spec, jax.random.PRNGKey(0))
    before = jax.device_get(state)
    mesh = sharding.make_mesh(n_devices)
    fn = sharding.jit_step(step_fn, mesh)
    state, frozen = sharding.replicate(state, mesh), sharding.replicate(frozen, mesh)
    for i in range(n_steps):
        hr = np.random.RandomState(i).randint(0, 256, (2, 160, 160, 3)).astype(np.uint8)
        state, metrics = fn(state, sharding.global_batch({"hr": hr}, mesh), frozen)
    return before, jax.device_get(state), jax.device_get(metrics)


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


def test_gan_teacher_step_updates_g_and_ema_with_decay_0_999_and_fills_the_pool(tmp_path):
    before, after, metrics = _one_step(_config("gan_teacher", tmp_path))
    # One pool per group: (groups, queue_size, ...), each holding its group's pair.
    assert after.pool["count"].tolist() == [1, 1] and after.pool["gt"].shape == (2, 2, 64, 64, 3)
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
    before, after, metrics = _one_step(_config("gan", tmp_path, variant, groups=1))
    for k in ("l1", "kd", "perceptual", "g_gan", "d_real", "d_fake"):
        assert np.isfinite(metrics[k]) and metrics[k] > 0, k
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["kd"] +
                               metrics["perceptual"] + metrics["g_gan"], rtol=1e-5)
    moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(before.d_params, after.d_params) > 0
    assert moved(before.d_spectral, after.d_spectral) > 0
    assert moved(before.params, after.params) > 0
    assert {int(s.count) for s in jax.tree.leaves(
        after.d_opt_state, is_leaf=lambda x: hasattr(x, "count"))} == {1}


def test_gan_step_with_per_group_pools_is_the_same_on_2_devices_as_on_1(tmp_path):
    """Three steps (pools filled, then mixing): the groups' draws and pools do not depend
    on how many devices run the step."""
    config = _config("gan_teacher", tmp_path)
    _, one, m1 = _one_step(config, 1, 3)
    _, two, m2 = _one_step(config, 2, 3)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(two.pool["lq"], one.pool["lq"], rtol=1e-5, atol=1e-6)
    _leaves_close(two.params, one.params, rtol=1e-4, atol=1e-5)


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
