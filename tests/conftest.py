"""Shared test setup: simulated CPU devices, fixture paths, float32 exactness."""

import os
import pathlib

# Must happen before jax is imported anywhere: lets sharding tests use 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """Directory of the official-PyTorch parity fixtures (../shared/fixtures).

    Users without the fixtures get a skip; CI (CI=true) must have them, so there a
    missing directory is a failure, never a silent skip.
    """
    if not FIXTURES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixtures missing at {FIXTURES} (required in CI)")
        pytest.skip(f"parity fixtures not found at {FIXTURES}")
    return FIXTURES


def load_npz(path) -> dict:
    """All arrays of a fixture .npz, read once into a dict (for module-scoped fixtures)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def to_nhwc(a) -> np.ndarray:
    """A fixture's NCHW array in our NHWC layout (numpy)."""
    return np.transpose(np.asarray(a), (0, 2, 3, 1))


def make_tiny_checkpoint(tmp_path_factory, kind: str = "student", seed: int = 0):
    """A converted checkpoint directory of the 'tiny' preset (random weights):
    returns (path, model, variables). Shared by the evaluate and upscale CLI tests."""
    from kdsr_jax import convert
    from kdsr_jax.models import build_model, init_variables
    from kdsr_jax.models.spec import preset

    spec = preset("tiny", kind=kind)
    variables = init_variables(spec, jax.random.key(seed))
    directory = tmp_path_factory.mktemp("ckpt") / f"tiny_{kind}"
    convert.save_converted(directory, spec, variables)
    return str(directory), build_model(spec), variables
