"""Masked-canvas (bucketed) and tiled inference equal the plain unpadded forward
(kdsr_jax/evaluate/tiling.py), on the tiny preset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.evaluate import tiling
from kdsr_jax.models import build_model, init_variables, spec as spec_lib

TOL = 1e-5  # float32 rounding only (brief: bucketed / tiled == unpadded within 1e-5)


@pytest.fixture(scope="module")
def tiny():
    sp = spec_lib.preset("tiny")
    return build_model(sp), init_variables(sp, jax.random.key(0))


@pytest.fixture(scope="module")
def runner(tiny):
    return tiling.Runner(*tiny)


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=(h, w, 3)).astype(np.float32) for h, w in sizes]


def test_bucketed_batch_of_mixed_sizes_equals_unpadded_forward(tiny, runner):
    model, v = tiny
    images = _images([(20, 27), (33, 18), (31, 31)])   # two buckets, a padded batch
    outs = runner.forward(images, bucket=32, batch_size=2)
    for im, out in zip(images, outs):
        ref = np.asarray(model.apply(v, jnp.asarray(im[None])))[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= TOL


def test_canvas_idr_equals_unpadded_idr(tiny, runner):
    model, v = tiny
    im = _images([(21, 26)])[0]
    canvas = np.zeros((1, 32, 32, 3), np.float32)
    canvas[0, :21, :26] = im
    idr, fea = runner.encode_canvas(canvas, [(21, 26)])
    idr_ref, fea_ref = model.apply(v, jnp.asarray(im[None]), method="encode")
    assert np.abs(np.asarray(idr) - np.asarray(idr_ref)).max() <= TOL
    assert np.abs(np.asarray(fea) - np.asarray(fea_ref)).max() <= TOL


def test_reflect_padding_would_change_the_output_so_masking_is_needed(tiny):
    model, v = tiny
    im = _images([(21, 26)])[0]
    padded = np.pad(im, ((0, 11), (0, 6), (0, 0)), mode="reflect")
    ref = np.asarray(model.apply(v, jnp.asarray(im[None])))[0]
    naive = np.asarray(model.apply(v, jnp.asarray(padded[None])))[0][:84, :104]
    assert np.abs(naive - ref).max() > 1e-3


def test_tiled_idr_computed_once_equals_whole_image_idr(tiny, runner):
    model, v = tiny
    im = _images([(150, 170)], seed=1)[0]
    idr, fea = runner.encode_tiled(im, tile=64)
    idr_ref, fea_ref = model.apply(v, jnp.asarray(im[None]), method="encode")
    assert np.abs(np.asarray(idr) - np.asarray(idr_ref)).max() <= TOL
    assert np.abs(np.asarray(fea) - np.asarray(fea_ref)).max() <= TOL


def test_tiled_upscale_has_no_seams_and_equals_untiled(tiny, runner):
    model, v = tiny
    im = _images([(150, 170)], seed=1)[0]
    ref = np.asarray(model.apply(v, jnp.asarray(im[None])))[0]
    # tile_pad 16 >= the tiny generator's receptive radius (2*3 + 4 = 10): exact.
    assert tiling.generator_receptive_radius(model.spec) <= 16
    out = runner.upscale(im, tile=64, tile_pad=16)
    assert np.abs(out - ref).max() <= TOL
    # Below the receptive radius tiles only lose far context: small, but not exact.
    approx = runner.upscale(im, tile=64, tile_pad=4)
    assert 0 < np.abs(approx - ref).max() < 1e-2


def test_tiles_share_one_window_shape():
    wins = list(tiling.tile_windows(150, 170, 64, 16))
    shapes = {(w[1] - w[0], w[3] - w[2]) for w, _ in wins}
    assert shapes == {(96, 96)}
    covered = np.zeros((150, 170), int)
    for (y0, _, x0, _), c in wins:
        covered[y0 + c[0]:y0 + c[1], x0 + c[2]:x0 + c[3]] += 1
    assert (covered == 1).all()   # cores tile the image exactly once


def test_teacher_without_hr_is_a_clear_error():
    sp = spec_lib.preset("tiny", kind="teacher")
    r = tiling.Runner(build_model(sp), init_variables(sp, jax.random.key(1)))
    with pytest.raises(tiling.TeacherNeedsHRError, match="needs the HR image"):
        r.upscale(np.zeros((20, 20, 3), np.float32))


def test_teacher_with_hr_on_a_canvas_equals_unpadded_teacher_forward():
    sp = spec_lib.preset("tiny", kind="teacher")
    model, v = build_model(sp), init_variables(sp, jax.random.key(1))
    lr, hr = _images([(19, 22)])[0], _images([(76, 88)], seed=3)[0]
    out = tiling.Runner(model, v).forward([lr], [hr], bucket=32)[0]
    ref = np.asarray(model.apply(v, jnp.asarray(lr[None]), jnp.asarray(hr[None])))[0]
    assert np.abs(out - ref).max() <= TOL


def test_auto_tile_size_follows_the_documented_rule():
    sp = spec_lib.preset("KDSRs-M")
    # sqrt(0.25 * 8 GiB / (6 buffers * 4^2 * 64 ch * 4 B)) = 295.6 -> 288 (multiple of 32).
    assert tiling.auto_tile_size(sp, memory_bytes=8 << 30) == 288
    assert tiling.auto_tile_size(sp, memory_bytes=1 << 20) == tiling.TILE_MIN
    assert tiling.auto_tile_size(sp, memory_bytes=1 << 50) == tiling.TILE_MAX
