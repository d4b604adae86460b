"""The CPU inference formulations (kdsr_jax.inference): the packed layout round-trips,
halos hold the neighbouring rows, the packed generator and `super_resolve` give exactly
the plain `model.apply` values, and each formulation is taken exactly where it applies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax import inference
from kdsr_jax.inference import cpu_conv, packed
from kdsr_jax.models import build_model, init_variables
from kdsr_jax.models.kdsr import Generator
from kdsr_jax.models.spec import preset

on_cpu = pytest.mark.skipif(not inference.packing_pays(),
                            reason="CPU-only path, needs 2 CPUs to be taken")
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
    g = Generator(8, 3, scale)
    lr = jnp.asarray(np.random.default_rng(2).random((b, h, w, 3), np.float32))
    idr = _random((b, 8), 3)
    params = g.init(jax.random.key(0), lr, idr)["params"]
    want = jax.jit(g.apply)({"params": params}, lr, idr)
    got = jax.jit(packed.generator, static_argnums=0)(g, params, lr, idr)
    assert got.shape == want.shape == (b, scale * h, scale * w, 3)
    # XLA may fuse the bias adds differently in the two programs (one rounding step)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6)


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@on_cpu
@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_super_resolve_takes_the_packed_path_with_the_plain_values(kind, monkeypatch):
    spec = preset("tiny", kind=kind, scale=2)
    variables = init_variables(spec, jax.random.key(1))
    lr = jnp.asarray(np.random.default_rng(4).random((2, 12, 20, 3), np.float32))
    hr = None if kind == "student" else jnp.asarray(
        np.random.default_rng(5).random((2, 24, 40, 3), np.float32))
    model = build_model(spec)
    generator_calls = _spy(monkeypatch, packed, "generator")
    conv_calls = _spy(monkeypatch, cpu_conv, "packed_conv")
    got = jax.jit(inference.super_resolve, static_argnums=0)(model, variables, lr, hr)
    assert generator_calls, "float32 on CPU should run G through inference.packed"
    assert conv_calls, "KD-IDE's narrow convs should be strip-packed"
    want = jax.jit(model.apply)(variables, *((lr,) if hr is None else (lr, hr)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@on_cpu
def test_plain_apply_never_packs_and_super_resolve_packs_only_where_it_pays(monkeypatch):
    spec = preset("tiny", scale=2)
    variables = init_variables(spec, jax.random.key(2))
    lr = jnp.full((1, 10, 12, 3), 0.5, jnp.float32)
    wide = jnp.full((1, 4, cpu_conv.NARROW_WIDTH, 3), 0.5, jnp.float32)
    generator_calls = _spy(monkeypatch, packed, "generator")
    conv_calls = _spy(monkeypatch, cpu_conv, "packed_conv")
    build_model(spec).apply(variables, lr)                                      # plain
    build_model(spec).apply(variables, lr, mutable=["intermediates"])
    assert not generator_calls and not conv_calls
    bf16 = build_model(spec, jnp.bfloat16)
    assert inference.formulation(bf16, lr) == "packed-convs"
    np.testing.assert_array_equal(                                              # bfloat16
        np.asarray(inference.super_resolve(bf16, variables, lr)),
        np.asarray(bf16.apply(variables, lr)))
    assert not generator_calls and conv_calls
    model = build_model(spec)
    assert inference.formulation(model, wide) == "packed-convs"
    np.testing.assert_array_equal(                                              # wide image
        np.asarray(inference.super_resolve(model, variables, wide)),
        np.asarray(model.apply(variables, wide)))
    assert not generator_calls
    assert inference.formulation(model, lr) == "packed"
    inference.super_resolve(model, variables, lr)
    assert len(generator_calls) == 1


@pytest.mark.parametrize("canvas_w", [24, 128])     # packed G / modules with masks
def test_generate_on_a_masked_canvas_equals_g_on_each_image_alone(canvas_w):
    spec = preset("tiny", scale=2)
    variables = init_variables(spec, jax.random.key(5))
    model = build_model(spec)
    sizes = [(13, 21), (16, 9)]
    rng = np.random.default_rng(6)
    images = [rng.random((h, w, 3), np.float32) for h, w in sizes]
    canvas = np.zeros((2, 16, canvas_w, 3), np.float32)
    for i, im in enumerate(images):
        canvas[i, :im.shape[0], :im.shape[1]] = im
    idr = _random((2, 16), 7)
    fn = jax.jit(inference.generate, static_argnums=0)
    got = np.asarray(fn(model, variables, jnp.asarray(canvas), idr, jnp.asarray(sizes)))
    want_how = "packed" if canvas_w < cpu_conv.NARROW_WIDTH else "packed-convs"
    if inference.packing_pays():
        assert inference.formulation(model, canvas) == want_how
    for i, (h, w) in enumerate(sizes):
        alone = model.apply(variables, jnp.asarray(images[i][None]), idr[i:i + 1],
                            method="generate")
        np.testing.assert_allclose(got[i, :2 * h, :2 * w], np.asarray(alone)[0],
                                   rtol=0, atol=2e-6)
        assert not got[i, 2 * h:].any() and not got[i, :, 2 * w:].any()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_a_single_cpu_process_takes_the_plain_path(monkeypatch):
    """With one CPU XLA runs one thread: packing only adds copies, so plain apply."""
    model = build_model(preset("tiny", scale=2))
    lr = jnp.zeros((1, 10, 12, 3), jnp.float32)
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert not inference.packing_pays()
    assert inference.formulation(model, lr) == "plain"
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert inference.formulation(model, lr) == "packed"


def test_super_resolve_rejects_wrong_models_and_inputs_in_one_line():
    student = build_model(preset("tiny", scale=2))
    teacher = build_model(preset("tiny", kind="teacher", scale=2))
    disc = build_model(preset("tiny", kind="discriminator"))
    lr = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="needs the HR image"):
        inference.super_resolve(teacher, {}, lr)
    with pytest.raises(ValueError, match="LR image only"):
        inference.super_resolve(student, {}, lr, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="SR model"):
        inference.super_resolve(disc, {}, lr)
    with pytest.raises(ValueError, match=r"\(B, h, w, 3\)"):
        inference.super_resolve(student, {}, jnp.zeros((8, 8, 3)))


def test_empty_batch_gives_an_empty_output():
    spec = preset("tiny", scale=2)
    variables = init_variables(spec, jax.random.key(3))
    model = build_model(spec)
    for out in (model.apply(variables, jnp.zeros((0, 8, 6, 3))),
                inference.super_resolve(model, variables, jnp.zeros((0, 8, 6, 3)))):
        assert out.shape == (0, 16, 12, 3)
