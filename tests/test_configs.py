"""configs/*.py: official hyperparameters (reference/TRAINING.md), variants, overrides."""

import copy
import importlib.util
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from kdsr_jax import convert, models
from kdsr_jax.data import pipeline
from kdsr_jax.evaluate import protocol
from kdsr_jax.train import config_base, evaluation, loop

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
                  "eval_every_steps", "model", "degradation"):
        assert field in c, field
    assert "source" in c.data and "preset" in c.model
    assert c.total_steps > 0 and c.batch_size > 0
    assert ("teacher" in c) == (name not in ("teacher", "gan_teacher"))
    config_base.validate(c)
    for variant in ("demo", "aniso", "L", "v2"):
        try:
            config_base.validate(load(name, variant))
        except ValueError as exc:
            assert "unknown config variant" in str(exc)


def test_classic_teacher_is_the_official_stage3_setting():
    c = load("teacher")
    assert (c.batch_size, c.patch_size, c.seed) == (64, 256, 1)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps) == (0.9, 0.999, 1e-8)
    assert c.total_steps == 500 * EPOCH
    assert (c.schedule.lr, c.schedule.gamma, c.schedule.decay_epochs) == (1e-4, 0.5, 125)
    assert c.model.preset == "KDSRs-M" and c.degradation.blur == "iso"
    assert c.degradation.noise == 0 and c.ema_decay == 0
    assert c.augment == "dihedral" and c.data.crop == "random"
    assert (c.data.first, c.data.last) == (1, 3450)      # --data_range 1-3450
    assert c.eval.protocol == "iso" and load("teacher", "aniso").eval.protocol == "aniso"


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
        assert c.model.preset == "KDSR-GAN" and c.seed == 0
        # One 180-pair pool and one set of batch-level draws per group of 9 (per process).
        assert (c.degradation.queue_size, c.degradation.group_size) == (180, 9)
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


# ------------------------------------------------------------------- one scale --

_PRINT_SCALES = """
from absl import app
from ml_collections import config_flags
_C = config_flags.DEFINE_config_file("config", None, "", lock_config=True)
app.run(lambda argv: print(_C.value.model.scale, _C.value.degradation.scale,
                           _C.value.patch_size))
"""


@pytest.mark.parametrize("name, scale, patch", [
    ("teacher", 2, 128), ("student", 3, 192), ("gan_teacher", 2, 400)])
def test_model_scale_on_the_command_line_drives_degradation_and_patch(name, scale, patch):
    out = subprocess.run([sys.executable, "-c", _PRINT_SCALES,
                          f"--config={os.path.join(REPO, 'configs', name + '.py')}",
                          f"--config.model.scale={scale}"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(scale), str(scale), str(patch)]


def test_contradicting_scales_are_refused_before_compiling_naming_both_fields():
    c = load("teacher")
    c.degradation = ml_collections.ConfigDict(c.degradation.to_dict())   # unlinked copy
    c.degradation.scale = 2
    with pytest.raises(config_base.ConfigError, match=r"degradation.scale=2.*model.scale=4"):
        loop.model_spec(c)


@pytest.mark.parametrize("edit, match", [
    (lambda c: setattr(c, "patch_size", 250), r"patch_size=250.*model.scale=4"),
    (lambda c: setattr(c.degradation, "gt_size", 250), r"gt_size=250.*model.scale"),
    (lambda c: setattr(c, "batch_size", 70), r"batch_size=70.*group_size=9"),
    (lambda c: setattr(c.degradation, "queue_size", 100), r"queue_size=100.*group_size=9"),
    (lambda c: setattr(c.model, "scale", 8), r"eval.protocol='iso'.*model.scale=8"),
])
def test_field_pairs_that_contradict_are_named(edit, match):
    c = load("gan_teacher") if "size" in match and "patch" not in match else load("teacher")
    edit(c)
    with pytest.raises(config_base.ConfigError, match=match):
        config_base.validate(c)


@pytest.mark.parametrize("scale", [2, 3])
def test_x2_and_x3_train_one_step(scale):
    c = load("teacher", "demo")
    c.model.update(dict(n_feats=8, n_blocks=1, n_resblocks=1))
    c.model.scale = scale
    c.batch_size = 2
    spec = loop.model_spec(c)
    step_fn, state, frozen = loop.build(c, spec, jax.random.PRNGKey(0))
    hr = np.random.RandomState(0).randint(0, 256, (2, c.patch_size, c.patch_size, 3))
    state, metrics = jax.jit(step_fn)(state, {"hr": hr.astype(np.uint8)}, frozen)
    assert c.patch_size == 16 * scale and np.isfinite(float(metrics["loss"]))


# ------------------------------------------ every field acts or is refused (issue 16) --

class _Tracked:
    """A read-only view of a ConfigDict that records every leaf read (dotted paths).
    `items()` / `keys()` / `to_dict()` count as reading everything below."""

    def __init__(self, cfg, path, log):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name):
        value = self._cfg[name]
        path = self._path + name
        if isinstance(value, ml_collections.ConfigDict):
            return _Tracked(value, path + ".", self._log)
        self._log.add(path)
        return value

    def __contains__(self, name):
        return name in self._cfg

    def get(self, name, default=None):
        return self[name] if name in self._cfg else default

    def keys(self):
        return list(self._cfg.keys())

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def to_dict(self):
        for k in self.keys():
            v = self[k]
            if isinstance(v, _Tracked):
                v.to_dict()
        return self._cfg.to_dict()


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _other_value(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "_other"
    if isinstance(v, (list, tuple)):
        return list(v)[:-1] if len(v) > 1 else list(v) * 2
    raise TypeError(type(v))


# Fields the training loop reads itself (loop.train_and_evaluate), checked in its source.
_LOOP_FIELDS = ("seed", "batch_size", "patch_size", "augment", "total_steps",
                "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "eval_every_steps", "eval.num_tensorboard_images")


def _reads_of_one_stage(c, tmp_path, monkeypatch):
    """Every field read while checking, building, tracing one step, opening the data
    and preparing validation (LR synthesis stubbed: only which fields it reads counts)."""
    monkeypatch.setattr(protocol, "synthesize_lr", lambda hr, deg, s, key: np.zeros(
        (hr.shape[0] // s, hr.shape[1] // s, 3), np.float32))
    log = set()
    t = _Tracked(c, "", log)
    spec = loop.model_spec(c)          # untracked: validate reads every field it checks
    step_fn, state, frozen = loop.build(t, spec, jax.random.PRNGKey(0))
    hr = jax.ShapeDtypeStruct((c.batch_size, c.patch_size, c.patch_size, 3), np.uint8)
    jax.eval_shape(step_fn, state, {"hr": hr}, frozen)
    pipeline.create_train_iterator(t.data, batch_size=c.batch_size, patch_size=c.patch_size,
                                   augment=c.augment, seed=c.seed, start_step=0)
    evaluation.make_pairs(t.eval, spec.scale)
    # model_spec's own reads (validate excluded): the model fields and the stage.
    log.update({"stage", "model.preset", "model.scale", "model.dynconv", "model.n_feats",
                "model.n_blocks", "model.n_resblocks"})
    return log


def _tiny(name, arg, tmp_path):
    c = load(name, arg)
    c.model.update(dict(n_feats=8, n_blocks=1, n_resblocks=1))
    c.batch_size = 2
    c.eval.num_images = 1
    c.eval.max_side = 64
    c.data.worker_threads = 0
    if name.startswith("gan"):
        c.patch_size = 160
        c.degradation.gt_size = 64
        c.degradation.group_size = 1
        c.degradation.queue_size = 2
    if name == "gan":
        c.discriminator.num_feat = 8
        c.perceptual.vgg_path = "random"
    setting = "gan" if name.startswith("gan") else "classic"
    for role in ("teacher", "student"):
        if role in c:
            spec = models.preset("tiny", kind=role, setting=setting, n_feats=8, n_blocks=1,
                                 n_resblocks=1)
            path = tmp_path / f"{setting}_{role}"
            if not path.exists():
                convert.save_converted(path, spec, models.init_variables(
                    spec, jax.random.PRNGKey(3)))
            c[role] = str(path)
    return c


@pytest.mark.parametrize("name, arg", [
    ("teacher", "demo"), ("student", "demo,aniso"), ("gan_teacher", "demo"),
    ("gan_student", "demo"), ("gan", "demo,v2")])
def test_every_field_is_read_or_refused_when_set(name, arg, tmp_path, monkeypatch):
    """Walks every leaf field: either the code reads it (building the stage, tracing its
    step, opening its data, preparing its validation, or in the loop itself), or
    setting it to another value is refused by `validate`, naming the field."""
    c = _tiny(name, arg, tmp_path)
    reads = _reads_of_one_stage(c, tmp_path, monkeypatch)
    loop_source = open(loop.__file__).read()
    for field in _LOOP_FIELDS:
        assert f"config.{field}" in loop_source, field
    reads.update(_LOOP_FIELDS)
    unread, silent = [], []
    for path, value in _leaves(c):
        if path in reads:
            continue
        unread.append(path)
        changed = copy.deepcopy(c)
        *parents, leaf = path.split(".")
        section = changed
        for p in parents:
            section = section[p]
        section[leaf] = _other_value(value)
        try:
            config_base.validate(changed)
        except config_base.ConfigError as exc:
            if not re.search(re.escape(path) + r"\b", str(exc)):
                silent.append(f"{path} (refused, but the message names another field: {exc})")
        else:
            silent.append(path)
    assert not silent, f"fields neither read nor refused: {silent}"
    assert len(unread) < len(list(_leaves(c)))
