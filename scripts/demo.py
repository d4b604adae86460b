#!/usr/bin/env python
"""`make demo` and `make ablation`: KDSR's two classic stages in minutes on a CPU, judged
on photos the models never saw.

`make demo` (`python scripts/demo.py`):

1. teacher KDSR_T (`configs/teacher.py:demo`): L1, its KD-IDE_T reads LR and HR;
2. student KDSR_S (`configs/student.py:demo`): G starts from the teacher's, L1 + KD loss
   to the frozen teacher (paper Sec. 3, official `trainer_iso_stage{3,4}.py`);
3. the per-image table on the held-out photos (`kdsr_jax.data.samples.HELDOUT_PHOTOS`:
   a face, a fine texture, a drawing, natural scenes; none is used in training):
   PSNR-Y (official classic metric, shave = scale) of bicubic, teacher and student,
   mean over the official x4 Gaussian8 kernels sigma 1.8..3.2 (paper Table 1 protocol;
   deterministic LR synthesis of `kdsr_jax.evaluate.protocol`).

`make ablation` (`python scripts/demo.py --ablation`) adds the paper's ablation of the KD
loss: the same student stage again with the KD loss weight set to 0 (same teacher, same
seed, same data order, equal steps), then

* one table: bicubic, teacher (given HR), student without KD, student with KD on the
  held-out photos under iso sigmas and one aniso + noise kernel;
* the IDR figure `<workdir>/idr_pca.png` (the paper's visualisation of degradation
  representations): IDRs of held-out patches blurred with different sigmas, PCA to 2-D,
  coloured by sigma, for the teacher and both students, with the nearest-centroid
  accuracy of the IDR over the sigma classes (leave-one-photo-out), once for the IDR as
  it is and once at fixed content (each patch's IDRs minus their mean over the sigmas).

Everything comes from the installed packages (no ../shared, no download). Interrupt it at
any time (Ctrl-C saves a checkpoint): running it again resumes every stage. Tables are
also written to `<workdir>/heldout.txt` and `<workdir>/ablation.txt`.

    python scripts/demo.py [--workdir DIR] [--ablation] [--max-side N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdsr_jax import checkpoints
from kdsr_jax.data import samples
from kdsr_jax.evaluate import protocol
from kdsr_jax.inference import super_resolve
from kdsr_jax.train import evaluation, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 4
# Ablation kernels: three Gaussian8 widths and the shipped aniso + noise test
# (EVALUATION.md §1.3-1.4; the demo's models are trained on iso blur without noise, so the
# last row is outside their training family).
ABLATION_DEGRADATIONS = (
    protocol.Degradation("iso_gaussian", sig=1.8),
    protocol.Degradation("iso_gaussian", sig=2.6),
    protocol.Degradation("iso_gaussian", sig=3.2),
    protocol.aniso_degradation(**protocol.ANISO_DEFAULT),
)
# IDR figure: blur widths spread over the training range U[0.2, 4.0) (one class each),
# HR patch side and patches per held-out photo.
IDR_SIGMAS = (0.6, 1.2, 1.8, 2.4, 3.0, 3.6)
IDR_PATCH = 128
IDR_PATCHES_PER_PHOTO = 8
STUDENT_KD, STUDENT_NO_KD = "student KD", "student no-KD"


class Interrupted(RuntimeError):
    """A training stage stopped (signal) before its last step; it resumes on rerun."""


def load_config(name: str, arg: str):
    """`configs/<name>.py:get_config(arg)`, as `scripts/train.py --config` loads it."""
    path = os.path.join(REPO, "configs", name + ".py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def demo_configs():
    """(teacher config, student config) of the demo (`configs/*.py:demo`)."""
    return load_config("teacher", "demo"), load_config("student", "demo")


def no_kd(student_cfg):
    """The ablation's student: the same config with the KD loss weight set to 0."""
    cfg = student_cfg.copy_and_resolve_references()
    cfg.kd.weight = 0.0
    return cfg


def train_stage(label: str, cfg, workdir: str, num_devices: int | None = None) -> None:
    """Trains (or resumes) one stage; raises Interrupted if it stopped early."""
    print(f"== {label} -> {workdir}", flush=True)
    state = loop.train_and_evaluate(cfg, workdir, num_devices=num_devices)
    step = int(jax.device_get(state.step))
    if step < cfg.total_steps:
        raise Interrupted(f"{label} stopped at step {step}/{cfg.total_steps}; run the "
                          "same command again to resume")


# ------------------------------------------------------------------ held-out photos --

class Photo(NamedTuple):
    name: str
    kind: str
    hr: np.ndarray          # uint8 (H, W, 3), H and W multiples of the scale


def heldout_photos(max_side: int = 0, scale: int = SCALE) -> list[Photo]:
    """The held-out bundled photos (none is in the training split), centre-cropped to
    `max_side` (0 = whole photo), then cropped to a multiple of `scale` (protocol)."""
    out = []
    for name, img in samples.bundled_images("heldout"):
        hr = protocol.crop_to_scale(evaluation.centre_crop(img, max_side), scale)
        out.append(Photo(name, samples.HELDOUT_KINDS[name], hr))
    return out


def load_models(dirs: dict[str, str]) -> dict[str, tuple]:
    """{label: (model, variables)} of trained workdirs (`checkpoints.load`)."""
    return {label: checkpoints.load(path) for label, path in dirs.items()}


# One jitted forward for every model (static) and batch shape.
_SUPER_RESOLVE = jax.jit(super_resolve, static_argnums=0)


def predict(model, variables, lr: np.ndarray, hr_u8: np.ndarray) -> np.ndarray:
    """SR of a batch of LR images (D, h, w, 3) of one photo through
    `kdsr_jax.inference.super_resolve`; a teacher also reads the clean HR (its KD-IDE_T
    input), repeated over the batch. float32 (D, s h, s w, 3)."""
    hr = None
    if model.spec.kind == "teacher":
        hr = np.broadcast_to(hr_u8.astype(np.float32) / 255.0, (len(lr),) + hr_u8.shape)
    out = _SUPER_RESOLVE(model, {"params": variables["params"]}, jnp.asarray(lr),
                         None if hr is None else jnp.asarray(hr))
    return np.asarray(out, np.float32)


def score(models: dict[str, tuple], photos: list[Photo], degradations,
          scale: int = SCALE) -> dict[str, np.ndarray]:
    """{method: (photos, degradations, 2) PSNR-Y / SSIM-Y} for 'bicubic' and every model.

    The LR of photo i under degradation g is `protocol.synthesize_lr` with the protocol's
    noise key (0, i, g): the same pairs as `scripts/evaluate.py` would build."""
    methods = ["bicubic"] + list(models)
    out = {m: np.zeros((len(photos), len(degradations), 2)) for m in methods}
    for i, photo in enumerate(photos):
        lrs = np.stack([protocol.synthesize_lr(photo.hr, deg, scale, protocol.noise_key(0, i, g))
                        for g, deg in enumerate(degradations)])
        srs = {"bicubic": np.stack([protocol.bicubic_upscale(lr, scale) for lr in lrs])}
        for label, (model, variables) in models.items():
            srs[label] = predict(model, variables, lrs, photo.hr)
        for m in methods:
            for g in range(len(degradations)):
                out[m][i, g] = protocol.score_synthetic(srs[m][g], photo.hr, scale)
        print(f"   scored {photo.name}", flush=True)
    return out


def format_heldout_table(scores: dict[str, np.ndarray], photos: list[Photo],
                         student: str = STUDENT_KD) -> str:
    """Per-photo PSNR-Y (mean over the kernels), the student's gain over bicubic, and a
    mean row (over photos x kernels) with SSIM-Y."""
    methods = list(scores)
    head = f"{'held-out photo':<16}{'kind':<16}" + "".join(f"{m:>12}" for m in methods)
    lines = [head + f"{'vs bicubic':>12}", "-" * (len(head) + 12)]
    for i, p in enumerate(photos):
        psnr = {m: scores[m][i, :, 0].mean() for m in methods}
        lines.append(f"{p.name:<16}{p.kind:<16}" + "".join(f"{psnr[m]:>12.2f}" for m in methods)
                     + f"{psnr[student] - psnr['bicubic']:>+12.2f}")
    lines.append("-" * (len(head) + 12))
    mean = {m: scores[m][..., 0].mean() for m in methods}
    lines.append(f"{'mean PSNR-Y':<32}" + "".join(f"{mean[m]:>12.2f}" for m in methods)
                 + f"{mean[student] - mean['bicubic']:>+12.2f}")
    lines.append(f"{'mean SSIM-Y':<32}"
                 + "".join(f"{scores[m][..., 1].mean():>12.4f}" for m in methods))
    return "\n".join(lines)


def format_ablation_table(scores: dict[str, np.ndarray], degradations) -> str:
    """PSNR-Y per kernel (mean over the photos) for every method, KD minus no-KD, and a
    mean row."""
    methods = list(scores)
    width = max(len(d.label) for d in degradations) + 2
    head = f"{'kernel (x4)':<{width}}" + "".join(f"{m:>15}" for m in methods)
    lines = [head + f"{'KD - no-KD':>12}", "-" * (len(head) + 12)]
    rows = [(d.label, (slice(None), g)) for g, d in enumerate(degradations)]
    rows.append(("mean", (slice(None), slice(None))))
    for label, idx in rows:
        psnr = {m: scores[m][idx + (0,)].mean() for m in methods}
        if label == "mean":
            lines.append("-" * (len(head) + 12))
        lines.append(f"{label:<{width}}" + "".join(f"{psnr[m]:>15.2f}" for m in methods)
                     + f"{psnr[STUDENT_KD] - psnr[STUDENT_NO_KD]:>+12.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------- IDR separation figure --

class IDRPatches(NamedTuple):
    lr: np.ndarray          # float32 (N, p/s, p/s, 3)
    hr: np.ndarray          # uint8 (N, p, p, 3)
    sigma_class: np.ndarray  # (N,) index into the sigmas
    photo: np.ndarray       # (N,) index of the held-out photo
    patch: np.ndarray       # (N,) index of the HR patch (its blurred versions share it)


def idr_patches(photos: list[Photo], sigmas=IDR_SIGMAS, patch: int = IDR_PATCH,
                per_photo: int = IDR_PATCHES_PER_PHOTO, scale: int = SCALE) -> IDRPatches:
    """HR patches of every held-out photo (a regular grid of `per_photo` crops), each
    blurred with every sigma (deterministic classic LR, no noise). ValueError if a
    photo is smaller than `patch`."""
    lrs, hrs, cls, owner, ids = [], [], [], [], []
    for i, photo in enumerate(photos):
        h, w = photo.hr.shape[:2]
        if min(h, w) < patch:
            raise ValueError(f"{photo.name}: {h}x{w} is smaller than the {patch} px IDR patch")
        cols = int(np.ceil(np.sqrt(per_photo)))
        rows = int(np.ceil(per_photo / cols))
        ys = np.linspace(0, h - patch, rows).astype(int)
        xs = np.linspace(0, w - patch, cols).astype(int)
        corners = [(y, x) for y in ys for x in xs][:per_photo]
        for k, (y, x) in enumerate(corners):
            hr = photo.hr[y:y + patch, x:x + patch]
            for c, sig in enumerate(sigmas):
                deg = protocol.Degradation("iso_gaussian", sig=sig)
                lrs.append(protocol.synthesize_lr(hr, deg, scale, protocol.noise_key(1, i, k)))
                hrs.append(hr)
                cls.append(c)
                owner.append(i)
                ids.append(i * per_photo + k)
    return IDRPatches(np.stack(lrs), np.stack(hrs), np.asarray(cls), np.asarray(owner),
                      np.asarray(ids))


def encode_idr(model, variables, lr: np.ndarray, hr_u8: np.ndarray) -> np.ndarray:
    """The IDR (N, C) of KD-IDE (`method='encode'`); a teacher also reads the HR."""
    args = (jnp.asarray(lr),)
    if model.spec.kind == "teacher":
        args += (jnp.asarray(hr_u8, jnp.float32) / 255.0,)
    fn = jax.jit(lambda v, *a: model.apply(v, *a, method="encode")[0])
    return np.asarray(fn({"params": variables["params"]}, *args), np.float32)


def nearest_centroid_accuracy(x: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Leave-one-group-out nearest-centroid accuracy: for each group (photo), the class
    centroids come from the other groups' points and its points get the nearest
    centroid's class (Euclidean). Fraction correct over all points (chance: 1 / classes).
    ValueError if a class occurs in one group only."""
    correct = 0
    classes = np.unique(labels)
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        missing = set(classes.tolist()) - set(labels[train].tolist())
        if missing:
            raise ValueError(f"classes {sorted(missing)} occur only in group {g}: no "
                             "centroid to leave it out")
        cents = np.stack([x[train & (labels == c)].mean(0) for c in classes])
        d = ((x[test][:, None, :] - cents[None]) ** 2).sum(-1)
        correct += int((classes[d.argmin(1)] == labels[test]).sum())
    return correct / len(labels)


def centre_per_patch(x: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """x minus the mean of the rows of the same patch: what is left is how the IDR of
    one content moves with the blur width (the content's own offset removed)."""
    out = np.array(x, np.float64)
    for p in np.unique(patch):
        out[patch == p] -= out[patch == p].mean(0)
    return out


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) -> (projection (N, 2) on the two leading principal axes, explained variance
    ratio of each (2,))."""
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2
    return xc @ vt[:2].T, var[:2] / max(var.sum(), 1e-12)


# The two views of the IDR: as it is, and at fixed content (`centre_per_patch`).
IDR_VIEWS = ("IDR", "IDR at fixed content")
BLUR_SHARE = "blur share of variance"


def idr_separation(models: dict[str, tuple], photos: list[Photo], sigmas=IDR_SIGMAS,
                   patch: int = IDR_PATCH, per_photo: int = IDR_PATCHES_PER_PHOTO):
    """({label: {view: (pca xy (N, 2), explained (2,), nearest-centroid accuracy)}} for
    both `IDR_VIEWS`, {label: blur share}, the sigma class of each point (N,)). The blur
    share is the fraction of the IDR's total variance over the patches that is left at
    fixed content (how much of the IDR moves with the blur rather than the content)."""
    data = idr_patches(photos, sigmas, patch, per_photo)
    out, shares = {}, {}
    for label, (model, variables) in models.items():
        idr = encode_idr(model, variables, data.lr, data.hr)
        fixed = centre_per_patch(idr, data.patch)
        shares[label] = float(fixed.var(0).sum() / max(idr.var(0).sum(), 1e-30))
        out[label] = {}
        for view, x in zip(IDR_VIEWS, (idr, fixed)):
            xy, explained = pca_2d(x)
            acc = nearest_centroid_accuracy(x, data.sigma_class, data.photo)
            out[label][view] = (xy, explained, acc)
    return out, shares, data.sigma_class


def save_idr_figure(path: str, separation: dict, cls: np.ndarray, sigmas=IDR_SIGMAS) -> str:
    """PCA scatters, one column per model and one row per `IDR_VIEWS`, points coloured
    by the blur sigma, the nearest-centroid accuracy in each title. Written with
    matplotlib's object API (no pyplot state); returns `path`."""
    views = list(next(iter(separation.values())))
    fig = Figure(figsize=(4.0 * len(separation) + 1.0, 3.9 * len(views) + 0.4), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(views), len(separation), squeeze=False)
    norm = colors.Normalize(min(sigmas), max(sigmas))
    for col, (label, per_view) in enumerate(separation.items()):
        for row, view in enumerate(views):
            xy, explained, acc = per_view[view]
            ax = axes[row, col]
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(sigmas)[cls], cmap="viridis",
                            norm=norm, s=12, alpha=0.85, linewidths=0)
            ax.set_title(f"{label}: {view}\nnearest-centroid accuracy {acc:.0%}", fontsize=10)
            ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)", fontsize=9)
            ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.03)
    bar.set_label("blur sigma (x4 isotropic Gaussian)")
    fig.suptitle(f"IDRs of held-out patches, PCA to 2-D; {len(sigmas)} blur classes, "
                 f"chance {1 / len(sigmas):.0%}", fontsize=11)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def format_separation(separation: dict[str, dict[str, float]]) -> str:
    """One row per model: the nearest-centroid accuracy of each of `IDR_VIEWS` and the
    blur share of the IDR's variance (`idr_separation`)."""
    lines = [f"IDR separation of the blur classes sigma {IDR_SIGMAS}: nearest-centroid "
             f"accuracy, leave-one-photo-out (chance {1 / len(IDR_SIGMAS):.0%}); 'at fixed "
             f"content' = each patch's IDRs minus their mean over the blur widths; "
             f"'{BLUR_SHARE}' = the variance left at fixed content / the IDR's variance",
             f"{'model':<16}" + "".join(f"{v:>24}" for v in IDR_VIEWS) + f"{BLUR_SHARE:>24}"]
    for label, row in separation.items():
        lines.append(f"{label:<16}" + "".join(f"{row[v]:>24.0%}" for v in IDR_VIEWS)
                     + f"{row[BLUR_SHARE]:>24.1e}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- driver --

def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def run(workdir: str, teacher_cfg, student_cfg, *, ablation: bool = False,
        max_side: int = 0, num_devices: int | None = None) -> dict:
    """Trains the stages (resuming), prints and writes the tables (and, with `ablation`,
    the figure). Returns {'heldout': scores, 'ablation': scores, 'separation': {label:
    {view: accuracy, BLUR_SHARE: share}}, 'figure': path} (the last three with `ablation`
    only); scores as `score` returns them."""
    t0 = time.time()
    dirs = {"teacher": os.path.join(workdir, "teacher"),
            STUDENT_KD: os.path.join(workdir, "student")}
    train_stage("stage 1: teacher (configs/teacher.py:demo)", teacher_cfg, dirs["teacher"],
                num_devices)
    student_cfg = student_cfg.copy_and_resolve_references()
    student_cfg.teacher = dirs["teacher"]
    train_stage("stage 2: student, L1 + KD (configs/student.py:demo)", student_cfg,
                dirs[STUDENT_KD], num_devices)
    if ablation:
        dirs[STUDENT_NO_KD] = os.path.join(workdir, "student_nokd")
        train_stage("stage 2 again: student without KD (kd.weight = 0)", no_kd(student_cfg),
                    dirs[STUDENT_NO_KD], num_devices)
    t_train = time.time() - t0

    photos = heldout_photos(max_side)
    models = load_models(dirs)
    result = {}
    sigmas = protocol.GAUSSIAN8_SIGMAS[SCALE]
    print(f"== held-out photos x Gaussian8 (x4, sigma {sigmas[0]}..{sigmas[-1]})", flush=True)
    result["heldout"] = score({k: models[k] for k in ("teacher", STUDENT_KD)}, photos,
                              protocol.iso_degradations(SCALE))
    table = format_heldout_table(result["heldout"], photos)
    note = (f"PSNR-Y (dB, official classic metric, shave 4), mean over the 8 Gaussian8 "
            f"kernels; teacher = KDSR_T, whose KD-IDE also reads the clean HR\n"
            f"training {t_train:.0f} s, total {time.time() - t0:.0f} s")
    text = f"{table}\n{note}"
    print("\n" + text, flush=True)
    _write(os.path.join(workdir, "heldout.txt"), text)
    if not ablation:
        return result

    print("== ablation: held-out photos under several kernels", flush=True)
    result["ablation"] = score({k: models[k] for k in ("teacher", STUDENT_NO_KD, STUDENT_KD)},
                               photos, ABLATION_DEGRADATIONS)
    print("== IDR of held-out patches under different blur widths", flush=True)
    separation, shares, cls = idr_separation(models, photos)
    figure = save_idr_figure(os.path.join(workdir, "idr_pca.png"), separation, cls)
    result["separation"] = {k: {**{view: acc for view, (_, _, acc) in v.items()},
                                BLUR_SHARE: shares[k]} for k, v in separation.items()}
    result["figure"] = figure
    text = (f"{format_ablation_table(result['ablation'], ABLATION_DEGRADATIONS)}\n"
            f"PSNR-Y (dB), mean over the {len(photos)} held-out photos; equal steps "
            f"({student_cfg.total_steps}) and the same teacher for both students. The demo "
            f"trains on iso blur without noise: the aniso + noise row is outside that family.\n"
            f"\n{format_separation(result['separation'])}\n"
            f"figure: {figure}\ntotal {time.time() - t0:.0f} s")
    print("\n" + text, flush=True)
    _write(os.path.join(workdir, "ablation.txt"), text)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "demo"),
                        help="where every stage writes checkpoints (resumed if present), "
                             "the tables and the figure (default: workdirs/demo)")
    parser.add_argument("--ablation", action="store_true",
                        help="also train the student without KD (equal steps, same "
                             "teacher) and print the KD ablation table and IDR figure")
    parser.add_argument("--max-side", type=int, default=0,
                        help="centre-crop the held-out photos to this side for a quicker "
                             "look (default 0: whole photos)")
    args = parser.parse_args(argv)
    if args.max_side and args.max_side < IDR_PATCH:
        parser.error(f"--max-side must be 0 or >= {IDR_PATCH}")
    teacher_cfg, student_cfg = demo_configs()
    try:
        run(args.workdir, teacher_cfg, student_cfg, ablation=args.ablation,
            max_side=args.max_side)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: the trained stages are saved; run the same command again to "
              "resume", file=sys.stderr)
        return 130
    except (ValueError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
