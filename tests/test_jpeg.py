"""Tests for kdsr_jax.degradation.jpeg (BasicSR DiffJPEG)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.degradation import jpeg

from conftest import load_npz, to_nhwc

# Fixture README, "DiffJPEG": >= 99% of pixels within 1e-5 and max abs <= 0.05.
JPEG_PIXEL_TOL = 1e-5
JPEG_MIN_FRACTION = 0.99
JPEG_MAX_ABS = 0.05


@pytest.fixture(scope="module")
def jpeg_fixture(fixtures_dir):
    return load_npz(fixtures_dir / "basicsr_diffjpeg.npz")


def _assert_jpeg_close(out, ref_nchw, name):
    ref = to_nhwc(ref_nchw)
    assert out.shape == ref.shape, name
    diff = np.abs(np.asarray(out) - ref)
    frac = float(np.mean(diff <= JPEG_PIXEL_TOL))
    assert frac >= JPEG_MIN_FRACTION, f"{name}: only {frac:.4f} of pixels within 1e-5"
    assert float(diff.max()) <= JPEG_MAX_ABS, f"{name}: max abs {diff.max()}"


def test_batched_per_image_quality_matches_basicsr_diffjpeg_fixture(jpeg_fixture):
    """basicsr_diffjpeg.npz out_batched, qualities [30, 60, 95] as a float32 array."""
    out = jpeg.compress(jnp.asarray(to_nhwc(jpeg_fixture["in_x"])), jnp.asarray(jpeg_fixture["quality_batched"]))
    _assert_jpeg_close(out, jpeg_fixture["out_batched"], "out_batched")


def test_differentiable_rounding_matches_basicsr_diffjpeg_fixture(jpeg_fixture):
    """basicsr_diffjpeg.npz out_batched_differentiable (round(x) + (x - round(x))**3)."""
    cfg = json.loads(str(jpeg_fixture["config_json"]))
    assert "(x-round(x))**3" in cfg["cases"]["out_batched_differentiable"]
    out = jpeg.compress(jnp.asarray(to_nhwc(jpeg_fixture["in_x"])), jnp.asarray(jpeg_fixture["quality_batched"]),
                        differentiable=True)
    _assert_jpeg_close(out, jpeg_fixture["out_batched_differentiable"],
                       "out_batched_differentiable")


@pytest.mark.parametrize("quality", [30, 60, 95])
def test_python_int_quality_and_odd_size_match_basicsr_diffjpeg_fixture(jpeg_fixture, quality):
    """basicsr_diffjpeg.npz out_qNN_int (48x64) and out_odd_qNN (37x53, padded + cropped)."""
    index = [30, 60, 95].index(quality)
    x = jnp.asarray(to_nhwc(jpeg_fixture["in_x"]))[index:index + 1]
    _assert_jpeg_close(jpeg.compress(x, quality), jpeg_fixture[f"out_q{quality}_int"],
                       f"out_q{quality}_int")
    odd = jpeg.compress(jnp.asarray(to_nhwc(jpeg_fixture["in_x_odd"])), quality)
    _assert_jpeg_close(odd, jpeg_fixture[f"out_odd_q{quality}"], f"out_odd_q{quality}")


def test_quality_factor_equals_basicsr_float32_factor(jpeg_fixture):
    """quality_tensor_after_call holds the factors DiffJPEG computed in float32."""
    factor = jpeg.quality_to_factor(jnp.asarray(jpeg_fixture["quality_batched"]))
    np.testing.assert_array_equal(np.asarray(factor), jpeg_fixture["quality_tensor_after_call"])
    jitted = jax.jit(jpeg.quality_to_factor)(jnp.asarray(jpeg_fixture["quality_batched"]))
    np.testing.assert_array_equal(np.asarray(jitted), jpeg_fixture["quality_tensor_after_call"])


def test_luma_table_is_the_transposed_standard_table():
    assert jpeg.LUMA_TABLE[0, 1] == 12 and jpeg.LUMA_TABLE[1, 0] == 11
    assert jpeg.LUMA_TABLE[7, 0] == 61 and jpeg.LUMA_TABLE[0, 7] == 72


def test_image_in_top_left_of_zero_canvas_compresses_like_the_image_alone():
    """Real-ESRGAN's shape-static pipeline keeps images in zero canvases (module doc)."""
    key_img, key_q = jax.random.split(jax.random.key(0))
    canvas = jnp.zeros((3, 64, 80, 3), jnp.float32)
    quality = jax.random.uniform(key_q, (3,), minval=30.0, maxval=95.0)
    compress = jax.jit(jpeg.compress)
    canvas_out = None
    for h, w in ((37, 53), (48, 64), (17, 80)):
        img = jax.random.uniform(key_img, (3, h, w, 3))
        alone = jpeg.compress(img, quality)
        canvas_out = compress(canvas.at[:, :h, :w].set(img), quality)
        np.testing.assert_array_equal(np.asarray(canvas_out[:, :h, :w]), np.asarray(alone))
    assert compress._cache_size() == 1  # one compilation for all sizes


def test_quality_is_traceable_and_per_image():
    img = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    out = jax.jit(jpeg.compress)(img, jnp.array([30.0, 95.0]))
    # Arrays use float32 factors (python numbers use float64), so compare like with like.
    single = [jpeg.compress(img[i:i + 1], jnp.array([q])) for i, q in enumerate((30.0, 95.0))]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.concatenate(single)))
    # Lower quality removes more detail.
    err = jnp.abs(out - img).mean(axis=(1, 2, 3))
    assert float(err[0]) > float(err[1])


def test_output_is_clamped_to_unit_range_and_keeps_shape():
    img = jax.random.uniform(jax.random.key(2), (2, 21, 30, 3))
    out = jpeg.compress(img, 10.0)
    assert out.shape == img.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_differentiable_mode_has_nonzero_gradient_and_hard_mode_zero():
    img = jax.random.uniform(jax.random.key(3), (1, 16, 16, 3))

    def loss(x, differentiable):
        return jnp.sum(jpeg.compress(x, 50.0, differentiable=differentiable))

    soft = jax.grad(loss)(img, True)
    hard = jax.grad(loss)(img, False)
    assert float(jnp.abs(soft).max()) > 0.0
    assert float(jnp.abs(hard).max()) == 0.0


def test_bad_inputs_raise_clear_value_errors():
    img = jnp.zeros((2, 16, 16, 3), jnp.float32)
    with pytest.raises(ValueError, match="shape"):
        jpeg.compress(jnp.zeros((16, 16, 3)), 50)
    with pytest.raises(ValueError, match="shape"):
        jpeg.compress(jnp.zeros((1, 16, 16, 4)), 50)
    with pytest.raises(ValueError, match="dtype"):
        jpeg.compress(jnp.zeros((1, 16, 16, 3), jnp.uint8), 50)
    with pytest.raises(ValueError, match="one value per image"):
        jpeg.compress(img, jnp.array([30.0, 40.0, 50.0]))
