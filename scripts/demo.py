#!/usr/bin/env python
"""`make demo`: train a tiny KDSR teacher, then a student, on the bundled photos.

Stage 3 (`configs/teacher.py:demo`) then stage 4 (`configs/student.py:demo`, the teacher
from the first workdir), then a table of held-out PSNR/SSIM (Y, official classic metric)
for bicubic, teacher and student under the official x4 isotropic Gaussian kernels
sigma in {1.8, ..., 3.2} (reference/EVALUATION.md §1.3, deterministic classic LR). Everything
comes from the installed packages (no ../shared, no download). Interrupt it at any time:
running it again resumes both stages from their checkpoints.

    python scripts/demo.py [--workdir DIR]
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str):
    path = os.path.join(REPO, "configs", name + ".py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def heldout_table(teacher_dir: str, student_dir: str, eval_cfg) -> dict[str, tuple[float, float]]:
    """Mean PSNR/SSIM-Y over held-out images x the 8 sigmas for bicubic/teacher/student
    (the training validation's pairs and metrics, `kdsr_jax.train.evaluation`)."""
    from kdsr_jax import checkpoints
    from kdsr_jax.evaluate import protocol
    from kdsr_jax.train import evaluation

    t_model, t_vars = checkpoints.load(teacher_dir)
    s_model, s_vars = checkpoints.load(student_dir)
    t_pred, s_pred = evaluation.make_predict(t_model), evaluation.make_predict(s_model)
    scale = s_model.spec.scale
    scores = {"bicubic": [], "teacher": [], "student": []}
    cfg = eval_cfg.copy_and_resolve_references()
    cfg.protocol = "iso"                     # every image at every Gaussian8 sigma
    for pair in evaluation.make_pairs(cfg, scale):
        outs = {"bicubic": protocol.bicubic_upscale(pair.lr, scale),
                "teacher": t_pred(t_vars["params"], pair),
                "student": s_pred(s_vars["params"], pair)}
        for name, sr in outs.items():
            scores[name].append(protocol.score_synthetic(np.asarray(sr), pair.hr, scale))
    return {k: tuple(np.mean(v, axis=0)) for k, v in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "demo"),
                        help="where both stages write checkpoints (resumed if present)")
    args = parser.parse_args(argv)
    from kdsr_jax.train import loop

    t0 = time.time()
    teacher_dir = os.path.join(args.workdir, "teacher")
    student_dir = os.path.join(args.workdir, "student")
    try:
        print("== stage 1/2: teacher (configs/teacher.py:demo) ->", teacher_dir, flush=True)
        loop.train_and_evaluate(load_config("teacher", "demo"), teacher_dir)
        print("== stage 2/2: student (configs/student.py:demo) ->", student_dir, flush=True)
        s_cfg = load_config("student", "demo")
        s_cfg.teacher = teacher_dir
        loop.train_and_evaluate(s_cfg, student_dir)
        print("== held-out evaluation (Gaussian8 x4, sigma 1.8..3.2)", flush=True)
        eval_cfg = s_cfg.eval
        eval_cfg.max_side = 0
        eval_cfg.num_images = 0
        table = heldout_table(teacher_dir, student_dir, eval_cfg)
    except (ValueError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nheld-out bundled photos, mean over images x 8 sigmas ({time.time() - t0:.0f} s)")
    print(f"{'method':<10}{'PSNR-Y (dB)':>14}{'SSIM-Y':>10}")
    for name, (psnr, ssim) in table.items():
        print(f"{name:<10}{psnr:>14.2f}{ssim:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
