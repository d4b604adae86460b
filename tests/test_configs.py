"""configs/*.py: official hyperparameters (reference/TRAINING.md), variants, overrides."""

import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("teacher", "student", "gan_teacher", "gan_student", "gan")
EPOCH = 971


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_the_fields_later_checks_rely_on(name):
    c = load(name)
    for field in ("total_steps", "batch_size", "seed", "checkpoint_every_steps",
                  "eval_every_steps", "teacher", "model", "degradation"):
        assert field in c, field
    assert "source" in c.data and "preset" in c.model
    assert c.total_steps > 0 and c.batch_size > 0


def test_classic_teacher_is_the_official_stage3_setting():
    c = load("teacher")
    assert (c.batch_size, c.patch_size, c.seed) == (64, 256, 1)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps) == (0.9, 0.999, 1e-8)
    assert c.total_steps == 500 * EPOCH
    assert (c.schedule.lr, c.schedule.gamma, c.schedule.decay_epochs) == (1e-4, 0.5, 125)
    assert c.model.preset == "KDSRs-M" and c.degradation.blur == "iso"
    assert c.degradation.noise == 0 and c.ema_decay == 0
    assert c.augment == "dihedral" and c.data.crop == "random"


def test_classic_student_iso_600_epochs_decay_150_and_L_variant():
    c = load("student")
    assert c.total_steps == 600 * EPOCH and c.schedule.decay_epochs == 150
    assert c.schedule.encoder_epochs == 0
    assert (c.kd.temperature, c.kd.weight) == (0.15, 1.0)
    assert load("student", "L").model.preset == "KDSRs-L"


def test_aniso_student_has_100_encoder_only_epochs_and_noise_25():
    c = load("student", "aniso")
    assert c.total_steps == 500 * EPOCH
    assert c.schedule.encoder_epochs == 100
    assert (c.schedule.lr_encoder, c.schedule.gamma_encoder, c.schedule.decay_encoder_epochs) \
        == (2e-4, 0.1, 60)
    assert c.degradation.blur == "aniso" and c.degradation.noise == 25
    assert load("teacher", "aniso").schedule.encoder_epochs == 0


def test_gan_stages_official_lengths_lrs_ema_and_adam_betas():
    t, s, g = load("gan_teacher"), load("gan_student"), load("gan")
    for c in (t, s, g):
        assert c.ema_decay == 0.999 and (c.optimizer.b1, c.optimizer.b2) == (0.9, 0.99)
        assert c.model.preset == "KDSR-GAN" and c.degradation.queue_size == 20 * 72 and c.seed == 0
        assert c.batch_size == 72 and c.patch_size == 400 and c.augment == "hflip"
    assert (t.total_steps, t.schedule.lr) == (1_000_000, 1e-4)
    assert (s.total_steps, s.schedule.lr, s.schedule.decay_steps) == (1_000_000, 2e-4, 600_000)
    assert (g.total_steps, g.schedule.lr, g.schedule.decay_steps, g.d_lr) == \
        (400_000, 1e-4, 400_000, 1e-4)
    assert g.perceptual.layer_weights.to_dict() == dict(
        conv1_2=0.1, conv2_2=0.1, conv3_4=1.0, conv4_4=1.0, conv5_4=1.0)
    assert g.gan_weight == 1.0 and not g.usm_teacher_gt
    assert load("gan", "v2").usm_teacher_gt


def test_demo_variant_is_tiny_on_bundled_photos():
    for name in ("teacher", "student"):
        c = load(name, "demo")
        assert c.model.preset == "tiny" and c.data.source == "bundled"
        assert c.total_steps < 10_000


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown config variant"):
        load("teacher", "huge")


_PRINT_CONFIG = """
import sys
from absl import app, flags
from ml_collections import config_flags
_C = config_flags.DEFINE_config_file("config", None, "", lock_config=True)
app.run(lambda argv: print(_C.value.batch_size, _C.value.teacher, _C.value.model.preset))
"""


def _parse(argv):
    return subprocess.run([sys.executable, "-c", _PRINT_CONFIG] + argv, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_command_line_overrides_and_unknown_fields():
    path = os.path.join(REPO, "configs", "student.py")
    ok = _parse([f"--config={path}:L,aniso", "--config.batch_size=16", "--config.teacher=/tmp/t"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["16", "/tmp/t", "KDSRs-L"]
    bad = _parse([f"--config={path}", "--config.no_such_field=3"])
    assert bad.returncode != 0 and "no_such_field" in bad.stderr
