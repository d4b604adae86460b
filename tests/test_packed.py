"""G's packed CPU path (kdsr_jax.models.packed): the layout round-trips, halos hold the
neighbouring rows, and `Generator` / the SR wrappers give the module-by-module values
and gradients, taking the packed path exactly where it is meant to apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.models import build_model, cpu_conv, init_variables, packed
from kdsr_jax.models.kdsr import Generator, upsampler_stages
from kdsr_jax.models.spec import preset

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only path")
SHAPES = [(1, 64, 64), (2, 37, 23), (3, 9, 50), (1, 5, 7), (1, 1, 5), (2, 2, 1)]


def _random(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_pack_unpack_round_trip_and_zero_outside_the_image(b, h, w):
    x = _random((b, h, w, 5))
    lay = packed.layout_for(b, h, w)
    for halo in (1, 2):
        e = packed.pack(x, lay, halo)
        assert e.shape == (1, lay.rows + 2 * halo, lay.packed_width, 5)
        np.testing.assert_array_equal(packed.unpack(packed.interior(e, lay, halo), lay), x)
        # Gap columns, filler rows and out-of-image halo rows are zero.
        outside = np.broadcast_to(lay.valid(halo) == 0, e.shape)
        assert not np.asarray(e)[outside].any()


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_extend_halo_rows_are_the_neighbouring_image_rows(b, h, w):
    x = np.asarray(_random((b, h, w, 3), 1))
    lay = packed.layout_for(b, h, w)
    halo = 2
    e = np.asarray(packed.pack(jnp.asarray(x), lay, halo))[0]
    sw = lay.strip_width
    for img in range(b):
        for s in range(lay.strips):
            col0 = (img * lay.strips + s) * sw + 1                    # after the gap column
            for r in range(-halo, lay.rows + halo):
                y = s * lay.rows + r
                want = x[img, y] if 0 <= y < h else np.zeros((w, 3), np.float32)
                np.testing.assert_array_equal(e[r + halo, col0:col0 + w], want)


@on_cpu
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("b,h,w", SHAPES[1:])
def test_packed_generator_equals_module_generator(scale, b, h, w):
    g = Generator(8, 3, scale, impl="shift")
    lr = jnp.asarray(np.random.default_rng(2).random((b, h, w, 3), np.float32))
    idr = _random((b, 8), 3)
    params = g.init(jax.random.key(0), lr, idr)["params"]
    want = g.apply({"params": params}, lr, idr)
    got = jax.jit(packed.generator, static_argnums=(3, 4, 5))(
        params, lr, idr, 3, tuple(upsampler_stages(scale)), 1.0)
    assert got.shape == want.shape == (b, scale * h, scale * w, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6)


def _count_packed_calls(monkeypatch):
    calls = []
    original = packed.generator
    monkeypatch.setattr(packed, "generator", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@on_cpu
@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_sr_models_take_the_packed_path_with_module_values_and_gradients(kind, monkeypatch):
    spec = preset("tiny", kind=kind, scale=2)
    variables = init_variables(spec, jax.random.key(1))
    lr = jnp.asarray(np.random.default_rng(4).random((2, 12, 20, 3), np.float32))
    inputs = (lr,) if kind == "student" else (
        lr, jnp.asarray(np.random.default_rng(5).random((2, 24, 40, 3), np.float32)))
    fast, plain = build_model(spec), build_model(spec.replace(dynconv="shift"))
    calls = _count_packed_calls(monkeypatch)
    got, feats = fast.apply(variables, *inputs, return_features=True)
    assert calls, "dynconv='auto' on CPU should run G through models.packed"
    want, want_feats = plain.apply(variables, *inputs, return_features=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(feats["idr"]), np.asarray(want_feats["idr"]))

    def loss(model):
        return lambda v: jnp.sum(jnp.sin(3.0 * model.apply(v, *inputs)))

    g_fast, g_plain = jax.grad(loss(fast))(variables), jax.grad(loss(plain))(variables)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@on_cpu
def test_packed_path_is_skipped_where_it_must_not_run(monkeypatch):
    spec = preset("tiny", scale=2)
    variables = init_variables(spec, jax.random.key(2))
    lr = jnp.full((1, 10, 12, 3), 0.5, jnp.float32)
    calls = _count_packed_calls(monkeypatch)
    build_model(spec).init(jax.random.key(0), lr)                              # initialising
    build_model(spec).apply(variables, lr, mutable=["intermediates"])           # recording
    build_model(spec, jnp.bfloat16).apply(variables, lr)                        # other dtype
    build_model(spec.replace(dynconv="shift")).apply(variables, lr)             # explicit impl
    wide = jnp.full((1, 4, cpu_conv.NARROW_WIDTH, 3), 0.5, jnp.float32)
    build_model(spec).apply(variables, wide)                                    # wide image
    assert not calls
    cpu_conv.set_packing(False)
    try:
        build_model(spec).apply(variables, lr)                                  # packing off
    finally:
        cpu_conv.set_packing(True)
    assert not calls
    build_model(spec).apply(variables, lr)
    assert len(calls) == 1


def test_empty_batch_gives_an_empty_output():
    spec = preset("tiny", scale=2)
    variables = init_variables(spec, jax.random.key(3))
    for impl in ("auto", "shift"):
        out = build_model(spec.replace(dynconv=impl)).apply(variables, jnp.zeros((0, 8, 6, 3)))
        assert out.shape == (0, 16, 12, 3)
