"""Parity of the Flax KDSR networks with the official PyTorch code, on every model
fixture of the shared parity fixtures (their README section A; tolerances from its "How
to compare").

Weights come through `kdsr_jax.convert.from_torch` (so these tests also prove the
converter). Fixtures are NCHW; they are transposed to NHWC here, at the boundary.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax import convert, inference
from kdsr_jax.convert import mapping, torch_io
from kdsr_jax.models import build_model

OUT_TOL = 2e-5          # model outputs, intermediates, train_* (README "How to compare")
GRAD_RTOL = 1e-4        # per tensor: max|g - g_ref| <= 1e-4 * max|g_ref| + 1e-7
GRAD_ATOL = 1e-7
SN_TOL = 1e-5           # discriminator train_updated u / v

SR_FIXTURES = ["classic_ta_small_x4", "classic_ta_small_x2", "classic_st_small_x4",
               "classic_st_small_x2", "gan_ta_small_x4", "gan_st_small_x4", "gan_st_small_x2"]

# fixture key -> path in our 'intermediates' collection (values are sown tuples)
INTERMEDIATES = {
    "int_E_input": ("E", "E_input"),
    "int_E_pooled": ("E", "E_pooled"),
    "int_head": ("G", "head_out"),
    "int_block0_kernel": ("G", "body", "block_0", "ddc", "kernel"),
    "int_block0_dynconv": ("G", "body", "block_0", "ddc", "dynconv"),
    "int_block0_out": ("G", "body", "block_0", "out"),
    "int_dag_out": ("G", "dag_out"),
    "int_tail_in": ("G", "tail_in"),
    "int_upsampled": ("G", "upsampled"),
    "int_tail_out": ("G", "tail_out"),
}


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def as_ref_layout(ours, ref):
    ours = nchw(ours)
    return ours.reshape(ref.shape) if ours.size == ref.size else ours


def model_inputs(model, z):
    if model.spec.kind == "teacher":
        return nhwc(z["in_lr"]), nhwc(z["in_hr"])
    return (nhwc(z["in_lr"]),)


def load(fixtures_dir, name, **overrides):
    model, variables = convert.from_torch(fixtures_dir / f"{name}.pth", **overrides)
    return model, variables, np.load(fixtures_dir / f"{name}.npz")


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.lru_cache(maxsize=None)
def sr_results(fixtures_dir, name):
    """One jitted pass per fixture: forward (with intermediates and features) + L1 grads."""
    model, variables, z = load(fixtures_dir, name)
    inputs = model_inputs(model, z)
    hr = nhwc(z["in_hr"])

    def loss_fn(params):
        (sr, feats), state = model.apply({"params": params}, *inputs, return_features=True,
                                         mutable=["intermediates"])
        return jnp.mean(jnp.abs(sr - hr)), (sr, feats, state["intermediates"])

    (loss, (sr, feats, inter)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"])
    return model, z, loss, sr, feats, inter, grads


@pytest.mark.parametrize("name", SR_FIXTURES)
def test_eval_outputs_and_intermediates_match_fixture_within_2e5(fixtures_dir, name):
    """eval_sr, eval_idr, eval_fea0 and every int_* within 2e-5 (train and eval forwards
    are the same function here, as in torch: no BN / dropout)."""
    _, z, _, sr, feats, inter, _ = sr_results(fixtures_dir, name)
    errors = {"eval_sr": max_err(nchw(sr), z["eval_sr"]),
              "eval_idr": max_err(feats["idr"], z["eval_idr"]),
              "eval_fea0": max_err(feats["fea"], z["eval_fea0"])}
    int_keys = sorted(k for k in z.files if k.startswith("int_"))
    assert set(int_keys) == set(INTERMEDIATES), "every int_* fixture must be checked"
    for key in int_keys:
        node = inter
        for p in INTERMEDIATES[key]:
            node = node[p]
        errors[key] = max_err(as_ref_layout(node[0], z[key]), z[key])
    f64 = max_err(nchw(sr), z["eval_sr_float64"])
    print(f"{name}: max errors {json.dumps(errors)}; eval_sr vs float64 {f64:.2e} "
          f"(torch fp32 vs fp64: {json.loads(str(z['config_json']))['fp32_vs_fp64_max_abs']:.2e})")
    bad = {k: v for k, v in errors.items() if not v <= OUT_TOL}
    assert not bad, f"{name}: above {OUT_TOL}: {bad}"
    assert f64 <= OUT_TOL


@pytest.mark.parametrize("name", SR_FIXTURES)
def test_train_outputs_and_l1_gradients_match_fixture(fixtures_dir, name):
    """train_sr / train_fea0 / train_l1_loss within 2e-5; grad/* per tensor within
    1e-4 * max|g_ref| + 1e-7, for every trainable parameter of the fixture."""
    model, z, loss, sr, feats, _, grads = sr_results(fixtures_dir, name)
    assert max_err(nchw(sr), z["train_sr"]) <= OUT_TOL
    assert max_err(feats["fea"], z["train_fea0"]) <= OUT_TOL
    assert max_err(loss, z["train_l1_loss"]) <= OUT_TOL

    ref_names = {k[len("grad/"):] for k in z.files if k.startswith("grad/")}
    table = [e for e in mapping.entries(model.spec) if e.collection == "params"]
    assert {e.torch_key for e in table} == ref_names, "every trainable parameter is compared"
    failures = []
    for e in table:
        g = grads
        for p in e.path:
            g = g[p]
        g = mapping.to_torch_layout(np.asarray(g), e.layout)
        ref = z[f"grad/{e.torch_key}"]
        err, tol = max_err(g, ref), GRAD_RTOL * float(np.max(np.abs(ref))) + GRAD_ATOL
        if not err <= tol:
            failures.append(f"{e.torch_key}: {err:.3e} > {tol:.3e}")
    assert not failures, failures


@pytest.mark.parametrize("name", SR_FIXTURES)
def test_plain_forward_and_super_resolve_match_eval_sr_within_2e5(fixtures_dir, name):
    """`model.apply(variables, lr[, hr])` (the plain reference) and
    `inference.super_resolve` as users call it (on the CPU: G on the strip-packed
    layout) both meet the tolerance."""
    model, variables, z = load(fixtures_dir, name)
    inputs = model_inputs(model, z)
    sr = model.apply(variables, *inputs)
    assert max_err(nchw(sr), z["eval_sr"]) <= OUT_TOL
    fast = inference.super_resolve(model, variables, *inputs)
    assert max_err(nchw(fast), z["eval_sr"]) <= OUT_TOL


@pytest.mark.parametrize("impl", ["shift", "grouped"])
def test_every_dynconv_formulation_matches_classic_st_x4_eval_sr_within_2e5(fixtures_dir, impl):
    model, variables, z = load(fixtures_dir, "classic_st_small_x4", dynconv=impl)
    assert model.spec.dynconv == impl
    sr = jax.jit(model.apply)(variables, *model_inputs(model, z))
    assert max_err(nchw(sr), z["eval_sr"]) <= OUT_TOL


def test_gan_decoy_params_fail_parity_while_params_ema_pass(fixtures_dir):
    """gan_st_small_x4: `params` is params_ema * 0.5; the converter must use params_ema."""
    z = np.load(fixtures_dir / "gan_st_small_x4.npz")
    obj = torch_io.load_pth(fixtures_dir / "gan_st_small_x4.pth")
    lr = nhwc(z["in_lr"])
    spec, good = mapping.from_state_dict(obj)
    _, decoy = mapping.from_state_dict({"params": obj["params"]})
    model = build_model(spec)
    assert max_err(nchw(model.apply(good, lr)), z["eval_sr"]) <= OUT_TOL
    assert max_err(nchw(model.apply(decoy, lr)), z["eval_sr"]) > 100 * OUT_TOL


def test_discriminator_eval_train_and_power_iteration_match_gan_d_small(fixtures_dir):
    """eval_out, train_out within 2e-5; train_updated u / v within 1e-5."""
    model, variables, z = load(fixtures_dir, "gan_d_small")
    x = nhwc(z["in_x"])

    def both(v, x):  # one compiled program: eval forward, then a train forward
        return model.apply(v, x), model.apply(v, x, train=True, mutable=["spectral"])

    out, (train_out, updated) = jax.jit(both)(variables, x)
    f64 = max_err(nchw(out), z["eval_out_float64"])
    print(f"gan_d_small: eval_out vs float64 {f64:.2e}")
    assert max_err(nchw(out), z["eval_out"]) <= OUT_TOL
    assert f64 <= OUT_TOL
    assert max_err(nchw(train_out), z["train_out"]) <= OUT_TOL
    ref_keys = sorted(k for k in z.files if k.startswith("train_updated/"))
    assert len(ref_keys) == 16
    for key in ref_keys:
        conv_name, which = key[len("train_updated/"):].split(".weight_")
        ours = updated["spectral"][conv_name][which]
        assert max_err(ours, z[key]) <= SN_TOL, key
    # the stored vectors really moved (the update is not a no-op)
    moved = max(max_err(updated["spectral"][c]["u"], variables["spectral"][c]["u"])
                for c in mapping.SN_CONVS)
    assert moved > 0
