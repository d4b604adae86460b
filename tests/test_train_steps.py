"""Training steps: data-parallel equivalence, frozen teacher, encoder-only warm-up."""


import jax
import ml_collections
import numpy as np

from kdsr_jax import models
from kdsr_jax.train import sharding, state as state_lib, steps


def _config(stage, encoder_epochs=0):
    return ml_collections.ConfigDict(dict(
        stage=stage, optimizer=dict(b1=0.9, b2=0.999, eps=1e-8),
        schedule=dict(kind="classic_epoch", steps_per_epoch=2, lr=1e-3, gamma=0.5,
                      decay_epochs=2, encoder_epochs=encoder_epochs, lr_encoder=2e-3,
                      gamma_encoder=0.1, decay_encoder_epochs=60),
        degradation=dict(blur_type="iso_gaussian", noise=0.0),
        kd=dict(temperature=0.15, weight=1.0)))


def _spec(kind):
    """Smaller than the 'tiny' preset: keeps compile time low."""
    return models.preset("tiny", kind=kind, n_feats=8, n_blocks=1, n_resblocks=1)


def _hr(seed=0, b=8, size=32):
    return np.random.RandomState(seed).randint(0, 256, (b, size, size, 3)).astype(np.uint8)


def _run(step_fn, params, n_devices, n_steps, frozen=None):
    mesh = sharding.make_mesh(n_devices)
    state = state_lib.create(params=params, tx=state_lib.adam(_config("teacher").optimizer),
                             seed=1)
    state = sharding.replicate(state, mesh)
    frozen = sharding.replicate(frozen or {}, mesh)
    fn = sharding.jit_step(step_fn, mesh)
    for i in range(n_steps):
        state, metrics = fn(state, sharding.global_batch({"hr": _hr(i)}, mesh), frozen)
    return jax.device_get(state), jax.device_get(metrics)


def test_teacher_step_on_8_devices_equals_1_device_at_same_global_batch():
    spec = _spec("teacher")
    params = models.init_variables(spec, jax.random.PRNGKey(0), (8, 8))["params"]
    fn = steps.make_teacher_step(_config("teacher"), models.build_model(spec))
    s1, m1 = _run(fn, params, 1, 2)
    s8, m8 = _run(fn, params, 8, 2)
    assert int(s8.step) == 2
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(s1.params), jax.tree.leaves(params)))
    assert moved > 1e-4   # the steps really trained


def _student_setup(encoder_epochs=0):
    t_spec = _spec("teacher")
    s_spec = _spec("student")
    t_vars = {"params": models.init_variables(t_spec, jax.random.PRNGKey(1), (8, 8))["params"]}
    s_params = models.init_variables(s_spec, jax.random.PRNGKey(2), (8, 8))["params"]
    s_params = {**s_params, "G": t_vars["params"]["G"]}
    fn = steps.make_student_step(_config("student", encoder_epochs), models.build_model(s_spec),
                                 models.build_model(t_spec))
    return fn, s_params, t_vars


def test_student_step_uses_l1_plus_kd_and_leaves_the_teacher_untouched():
    fn, s_params, t_vars = _student_setup()
    t_before = jax.tree.map(np.array, t_vars)
    state, metrics = _run(fn, s_params, 2, 2, frozen={"teacher": t_vars})
    assert float(metrics["kd"]) > 0
    np.testing.assert_allclose(metrics["loss"], metrics["l1"] + metrics["kd"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(t_before), jax.tree.leaves(t_vars)):
        np.testing.assert_array_equal(a, np.asarray(b))
    g_moved = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(state.params["G"]), jax.tree.leaves(t_before["params"]["G"])))
    assert g_moved > 0


def test_encoder_only_phase_trains_only_the_student_encoder_with_kd():
    fn, s_params, t_vars = _student_setup(encoder_epochs=1)   # first 2 steps: encoder only
    g_before = jax.tree.map(np.array, s_params["G"])
    e_before = jax.tree.map(np.array, s_params["E"])
    state, metrics = _run(fn, s_params, 1, 2, frozen={"teacher": t_vars})
    np.testing.assert_allclose(metrics["loss"], metrics["kd"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_before), jax.tree.leaves(state.params["G"])):
        np.testing.assert_array_equal(a, b)
    # torch skips parameters without a gradient: G and the encoder's `compress` (the KD
    # loss reads only the MLP output) keep their Adam step count at 0.
    counts = {"/".join(k.key for k in path): int(s.count) for path, s in
              jax.tree_util.tree_flatten_with_path(
                  state.opt_state, is_leaf=lambda x: hasattr(x, "count"))[0]}
    assert all(v == 0 for k, v in counts.items() if k.startswith("G/"))
    assert counts["E/compress/kernel"] == counts["E/compress/bias"] == 0
    assert all(v == 2 for k, v in counts.items()
               if k.startswith("E/") and not k.startswith("E/compress"))
    np.testing.assert_array_equal(state.params["E"]["compress"]["kernel"],
                                  e_before["compress"]["kernel"])
    assert max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(e_before), jax.tree.leaves(state.params["E"]))) > 0


def test_adam_skips_a_parameter_without_gradient_like_torch_step_count_included():
    """3 steps in which `b` gets no gradient (torch: grad None), then 2 steps with one;
    both arrays must follow torch.optim.Adam (its `b` starts bias correction at step 1)."""
    torch = __import__("torch")
    rng = np.random.RandomState(0)
    init = {"a": rng.randn(4, 3).astype(np.float32), "b": rng.randn(5).astype(np.float32)}
    grads = [{"a": rng.randn(4, 3).astype(np.float32), "b": rng.randn(5).astype(np.float32)}
             for _ in range(5)]
    lr, cfg = 1e-2, ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))

    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch.optim.Adam(list(tp.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for i, g in enumerate(grads):
        opt.zero_grad(set_to_none=True)
        tp["a"].grad = torch.tensor(g["a"])
        if i >= 3:
            tp["b"].grad = torch.tensor(g["b"])
        opt.step()

    tx = state_lib.adam(cfg)
    params = jax.tree.map(jax.numpy.asarray, init)
    opt_state = state_lib.init_adam(tx, params)
    for i, g in enumerate(grads):
        params, opt_state = state_lib.adam_update(tx, params, g, opt_state, lr,
                                                  received={"a": True, "b": i >= 3})
    # The moves from the start agree to float32 rounding (optax and torch order the
    # bias-corrected division differently); the shared counter misses by far more.
    moved = lambda x, k: np.asarray(x) - init[k]  # noqa: E731
    for k in ("a", "b"):
        np.testing.assert_allclose(moved(params[k], k), moved(tp[k].detach().numpy(), k),
                                   rtol=2e-5, atol=1e-7, err_msg=k)
    assert int(opt_state["b"].count) == 2 and int(opt_state["a"].count) == 5
    # The shared-counter behaviour (count 5 for `b`) moves `b` by a different amount.
    shared = jax.tree.map(jax.numpy.asarray, init)
    s_state = tx.init(shared)
    for i, g in enumerate(grads):
        u, s_state = tx.update({"a": g["a"], "b": g["b"] * (i >= 3)}, s_state, shared)
        shared = jax.tree.map(lambda p, v: p - lr * v, shared, u)
    wrong = np.abs(moved(shared["b"], "b") / moved(tp["b"].detach().numpy(), "b") - 1)
    assert wrong.min() > 0.1      # 35-47 % off here


def test_reached_by_marks_only_the_arrays_the_loss_reads():
    params = {"used": jax.numpy.ones(3), "dead": jax.numpy.ones(2), "aux": jax.numpy.ones(1)}

    def loss(p):
        _ = p["dead"] * 2.0            # computed, but not part of the loss
        return jax.numpy.sum(p["used"] ** 2)

    assert state_lib.reached_by(loss, params) == {"used": True, "dead": False, "aux": False}
