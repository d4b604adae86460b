"""The strip-packed CPU convolution (kdsr_jax.inference.cpu_conv) computes exactly what
`lax.conv_general_dilated` computes, for values and gradients, and is only used where
it applies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdsr_jax.inference import cpu_conv

DN = ("NHWC", "HWIO", "NHWC")


def _reference(x, w):
    kh, kw = w.shape[:2]
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=DN)


@pytest.mark.parametrize("shape,kernel", [
    ((1, 64, 64, 8), 3),     # the KDSRs-M case: 1 image cut into several strips
    ((2, 12, 16, 5), 3),     # fixture size: batch laid side by side, then strips
    ((3, 37, 23, 4), 3),     # height not divisible by the strip count
    ((1, 9, 7, 3), 5),       # 5x5 kernel, wider halo and gap
    ((4, 48, 48, 6), 3),     # training patches
])
def test_packed_conv_equals_lax_conv(shape, kernel):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], 7), np.float32))
    want = _reference(x, w)
    got = jax.jit(cpu_conv.packed_conv)(x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5)


def test_packed_conv_gradients_equal_lax_conv_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 20, 24, 4), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 5), np.float32))
    loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))  # noqa: E731
    g_want = jax.grad(loss(_reference), argnums=(0, 1))(x, w)
    g_got = jax.grad(loss(cpu_conv.packed_conv), argnums=(0, 1))(x, w)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


def test_dispatch_uses_packing_only_for_narrow_stride1_same_convs():
    x = jnp.zeros((1, 64, 64, 8))
    w = jnp.zeros((3, 3, 8, 8))
    same = ((1, 1), (1, 1))
    args = dict(lhs_dilation=None, rhs_dilation=None, dimension_numbers=DN,
                feature_group_count=1, batch_group_count=1)
    on_cpu = jax.default_backend() == "cpu"
    assert cpu_conv.eligible(x, w, (1, 1), same, **args) == on_cpu            # CPU only
    assert not cpu_conv.eligible(x, w, (2, 2), same, **args)                  # strided
    assert not cpu_conv.eligible(x, w, (1, 1), ((0, 0), (0, 0)), **args)      # valid
    assert not cpu_conv.eligible(jnp.zeros((1, 64, 256, 8)), w, (1, 1), same, **args)
    assert not cpu_conv.eligible(x, jnp.zeros((4, 4, 8, 8)), (1, 1), same, **args)


def test_dispatch_falls_back_to_lax_for_strided_convs():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 16, 16, 3), np.float32))
    w = jnp.asarray(rng.standard_normal((4, 4, 3, 5), np.float32))
    got = cpu_conv.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=DN)
    want = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
