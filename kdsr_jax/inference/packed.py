"""CPU inference formulation of G's low-resolution part: every LR feature map kept in one
strip-packed layout from the head conv to the first upsampling conv.

Why: on the CPU, XLA runs a 3x3 conv on both cores only once the image is wide
(`cpu_conv` explains it), so `cpu_conv.packed_conv` cuts each narrow image into
horizontal strips laid side by side. Done conv by conv, each conv pays a packing copy in
and an unpacking copy out. Here the maps stay packed through the head, all N IDR-DCRBs
and the body conv: one copy in, one out (`benchmarks/README.md` has the timings). KD-IDE
stays conv by conv (packing it whole gained nothing: XLA duplicated its residual fusions).

Layout (`Layout`): image b is cut into `strips` strips of `rows` rows (the last one
zero-filled below the image); the B*strips strips sit side by side along the width, each
preceded by one zero column, and one more zero column closes the row. A map is stored
*extended* by `halo` rows above and below each strip holding the neighbouring strip's
rows (zeros at the image border): (1, rows + 2 halo, B*strips*(W+1) + 1, C). On it a
3x3 zero-padded conv is 'valid' along the height, and the depthwise dynamic conv is nine
slices.

What is shared with `kdsr_jax.models.kdsr.Generator` and what is not: the parameters
(G's own parameter dict, same names), the hyperparameters (read from the `Generator`
module), IDR-DDC's kernel generator (the module's own `IDRDDC.kernels`, applied to the
block's parameters) and the layer helpers (MeanShift constants, LReLU, pixel shuffle).
What remains written out here is the data flow of G through the packed layout (head,
IDR-DCRB = conv(LReLU(DDC(x))) + x, long skip, upsampler): in this layout a conv is a
'valid' conv plus a halo refresh and the dynamic conv nine slices of a halo-2 map, so it
cannot be the modules' NHWC code. `tests/test_packed.py` holds it equal to the module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kdsr_jax.inference import cpu_conv
from kdsr_jax.models.kdsr import IDRDDC, Generator, upsampler_stages
from kdsr_jax.models.layers import lrelu, mean_shift_bias, pixel_shuffle

_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each pixel of a (batch, height, width, C) map lives in the packed layout.
    `valid_hw` (B, 2) int, optional: each image's true size at the top-left of its
    (height, width) canvas; everything outside it is then treated like the outside of
    the image (zero), as the tiling Runner's masked canvases need."""

    batch: int
    height: int
    width: int
    strips: int
    rows: int
    valid_hw: Any = dataclasses.field(default=None, compare=False)

    @property
    def strip_width(self) -> int:
        return self.width + 1                                   # a zero column, the image

    @property
    def packed_width(self) -> int:
        return self.batch * self.strips * self.strip_width + 1  # + a closing zero column

    def valid(self, halo: int):
        """(1, rows + 2 halo, packed_width, 1) float32: 1 on image pixels, 0 on gap
        columns, filler rows and rows beyond the image border (or outside `valid_hw`)."""
        r = np.arange(-halo, self.rows + halo)
        image_row = np.arange(self.strips)[:, None] * self.rows + r[None, :]   # (k, R)
        image_col = np.arange(self.strip_width) - 1                  # (W+1,), -1: the gap
        if self.valid_hw is None:
            h, w, xp = np.full((self.batch, 1, 1), self.height), np.full(
                (self.batch, 1), self.width), np
        else:
            h, w, xp = self.valid_hw[:, 0, None, None], self.valid_hw[:, 1, None], jnp
        row_ok = (image_row >= 0) & (image_row < h)                            # (B, k, R)
        col_ok = (image_col >= 0) & (image_col < w)                            # (B, W+1)
        m = row_ok[:, :, :, None] & col_ok[:, None, None, :]                   # (B, k, R, W+1)
        m = m.transpose(2, 0, 1, 3).reshape(r.size, self.packed_width - 1)
        m = xp.pad(m, ((0, 0), (0, 1)))                                        # closing column
        return m.reshape(1, r.size, self.packed_width, 1).astype(np.float32)


def layout_for(batch: int, height: int, width: int, valid_hw=None) -> Layout:
    """The packed layout of a (batch, height, width, C) map (`Layout`)."""
    strips = cpu_conv.strips_for(batch, height, width, 3)
    return Layout(batch, height, width, strips, -(-height // strips), valid_hw)


def mask_outside(x: jax.Array, valid_hw, factor: int) -> jax.Array:
    """x (B, H, W, C) with everything outside each image's `valid_hw * factor` zeroed;
    x itself when `valid_hw` is None."""
    if valid_hw is None:
        return x
    rows = jnp.arange(x.shape[1])[None, :, None] < valid_hw[:, 0, None, None] * factor
    cols = jnp.arange(x.shape[2])[None, None, :] < valid_hw[:, 1, None, None] * factor
    return x * (rows & cols)[..., None].astype(x.dtype)


def applies(x: jax.Array) -> bool:
    """Whether the packed path pays for an LR input `x` (B, H, W, C): CPU backend,
    float32, and an image narrow enough that XLA would not use both cores."""
    return (jax.default_backend() == "cpu" and x.ndim == 4 and x.dtype == jnp.float32
            and x.shape[2] < cpu_conv.NARROW_WIDTH and min(x.shape[:3]) >= 1)


# ------------------------------------------------------------------ layout changes --

def extend(p: jax.Array, lay: Layout, halo: int) -> jax.Array:
    """(1, rows, packed_width, C) -> (1, rows + 2 halo, packed_width, C): `halo` rows
    from the neighbouring strips above and below each strip, everything outside the
    image zeroed. A 3x3 conv needs halo 1; the dynamic conv followed by a conv, 2."""
    sw, pw = lay.strip_width, lay.packed_width
    if lay.rows < halo:      # one short strip (tiny image): its halo rows are all zero
        zeros = jnp.zeros(p.shape[:1] + (halo,) + p.shape[2:], p.dtype)
        return jnp.concatenate([zeros, p * lay.valid(0), zeros], axis=1)
    top = jnp.pad(p[:, -halo:], ((0, 0), (0, 0), (sw, 0), (0, 0)))[:, :, :pw]
    bottom = jnp.pad(p[:, :halo], ((0, 0), (0, 0), (0, sw), (0, 0)))[:, :, sw:]
    return jnp.concatenate([top, p, bottom], axis=1) * lay.valid(halo)


def pack(x: jax.Array, lay: Layout, halo: int) -> jax.Array:
    """(B, H, W, C) -> extended packed map."""
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, lay.strips * lay.rows - h), (1, 0), (0, 0)))
    x = x.reshape(b, lay.strips, lay.rows, lay.strip_width, c).transpose(2, 0, 1, 3, 4)
    x = x.reshape(1, lay.rows, lay.packed_width - 1, c)
    return extend(jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0))), lay, halo)


def interior(e: jax.Array, lay: Layout, halo: int) -> jax.Array:
    """The strips' own rows of an extended map: (1, rows, packed_width, C)."""
    return e[:, halo:halo + lay.rows]


def unpack(p: jax.Array, lay: Layout) -> jax.Array:
    """(1, rows, packed_width, C) -> (B, H, W, C)."""
    c = p.shape[-1]
    y = p[:, :, :-1].reshape(lay.rows, lay.batch, lay.strips, lay.strip_width, c)[..., 1:, :]
    y = y.transpose(1, 2, 0, 3, 4).reshape(lay.batch, lay.strips * lay.rows, lay.width, c)
    return y[:, :lay.height]


# ------------------------------------------------------------------------ the ops --

def conv(e1: jax.Array, params) -> jax.Array:
    """3x3 zero-padded conv + bias of a halo-1 extended map, read whole (XLA would copy a
    slice) -> (1, rows, packed_width, C'). Gap columns and filler rows hold junk until
    the next `extend` zeroes them."""
    y = lax.conv_general_dilated(e1, params["kernel"], (1, 1), ((0, 0), (1, 1)),
                                 dimension_numbers=_NHWC)
    return y + params["bias"]


def dynamic_conv_act(e2: jax.Array, kernels: jax.Array, lay: Layout) -> jax.Array:
    """LReLU of the per-sample depthwise 3x3 cross-correlation (kernels (B, 3, 3, C),
    zero padding) of a halo-2 extended map, on the strips' rows plus one halo row each
    side: a halo-1 map, zero outside the image, ready for `conv`:
    (1, rows + 2, packed_width, C)."""
    pw = lay.packed_width
    if lay.batch > 1:    # every packed column uses the kernels of its own image
        kernels = jnp.pad(jnp.repeat(kernels, lay.strips * lay.strip_width, axis=0),
                          ((0, 1), (0, 0), (0, 0), (0, 0)))
    e2 = jnp.pad(e2, ((0, 0), (0, 0), (1, 1), (0, 0)))
    out = None
    for ky in range(3):
        for kx in range(3):
            term = e2[:, ky:ky + lay.rows + 2, kx:kx + pw] * kernels[:, ky, kx, :]
            out = term if out is None else out + term
    return lrelu(out) * lay.valid(1)


# --------------------------------------------------------------------- networks --

def generator(g: Generator, params, lr: jax.Array, idr: jax.Array,
              valid_hw: jax.Array | None = None) -> jax.Array:
    """`g.apply({'params': params}, lr, idr)` (float32) with G's LR part (head, blocks,
    body conv, first upsampling conv) on the packed layout: lr (B, h, w, 3), idr (B, C)
    -> sr (B, s h, s w, 3).

    `valid_hw` (B, 2) int, optional: image b fills only the top-left `valid_hw[b]` of
    its canvas; every feature map is then zero outside it, as if G ran on that image
    alone (zero padding at its true border), the way the tiling Runner's masked canvas
    execution runs the modules. The output is zero outside `s * valid_hw`."""
    stages = upsampler_stages(g.scale)
    ddc = IDRDDC(g.n_feats, g.impl, jnp.float32)
    lay = layout_for(*lr.shape[:3], valid_hw=valid_hw)
    x = lr + mean_shift_bias(g.rgb_range, -1)
    f0 = conv(pack(x, lay, 1), params["head"])
    e = extend(f0, lay, 2)
    f0 = interior(e, lay, 2)                                   # f0 with zeros outside
    body = params["body"]
    for i in range(g.n_blocks):
        block = body[f"block_{i}"]
        kernels = ddc.apply({"params": block["ddc"]}, idr, method=IDRDDC.kernels)
        a = dynamic_conv_act(e, kernels, lay)
        e = extend(conv(a, block["conv"]) + interior(e, lay, 2), lay, 2)
    e = extend(conv(e[:, 1:-1], params["body_conv"]) + f0, lay, 1)     # halo 2 -> 1
    factor = stages[0]
    r = pixel_shuffle(mask_outside(unpack(conv(e, params["up_0"]), lay), valid_hw, 1), factor)
    for k, stage in enumerate(stages[1:], start=1):
        r = mask_outside(_plain_conv(r, params[f"up_{k}"]), valid_hw, factor)
        r = pixel_shuffle(r, stage)
        factor *= stage
    y = mask_outside(_plain_conv(r, params["tail"]), valid_hw, factor)
    return mask_outside(y + mean_shift_bias(g.rgb_range, +1), valid_hw, factor)


def _plain_conv(x, params):
    """G's 3x3 conv on an unpacked map, strip-packed conv by conv where that pays."""
    y = cpu_conv.conv_general_dilated(x, params["kernel"], (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=_NHWC)
    return y + params["bias"]
