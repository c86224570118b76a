"""On an accelerator: the suite computes there, at full precision. Skipped without one.

scripts/accelerator-check runs these (with the rest of the suite) on a GPU machine; the
`tpu` variants run wherever a TPU is attached.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from suite import cases as registry
from suite.run import environment, resolve_device, run_case

ACCELERATORS = [pytest.param("gpu", marks=pytest.mark.gpu),
                pytest.param("tpu", marks=pytest.mark.tpu)]


def _matmul_error(precision):
    """Normwise error of a float32 (512 x 512) product on the GPU against float64 numpy."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 512, 512)).astype(np.float32)
    gpu = resolve_device("gpu")
    x, y = jax.device_put(a, gpu), jax.device_put(b, gpu)
    with jax.default_matmul_precision(precision):
        out = np.asarray(jax.jit(jnp.matmul)(x, y), np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    return np.linalg.norm(out - exact) / np.linalg.norm(exact)


@pytest.mark.gpu
def test_float32_matmuls_run_at_full_precision():
    # float32 rounding of a 512-term dot product is ~sqrt(512)·u ≈ 1e-6 normwise; TF32
    # (10 mantissa bits) is ~1e-3. The suite's configure() pins "highest", so a float32
    # row can never pass (or fail) because the GPU quietly used TF32.
    assert jax.config.jax_default_matmul_precision == "highest"
    assert _matmul_error("highest") < 1e-5


@pytest.mark.gpu
def test_the_precision_check_can_fail():
    # The same product with TF32 allowed: on a GPU with tensor cores (Ampere and later)
    # the error is ~1e-3, which the bound above rejects. Older GPUs have no TF32.
    kind = resolve_device("gpu").device_kind
    if not any(name in kind for name in ("A100", "H100", "H200", "L4", "L40", "A10", "B200")):
        pytest.skip(f"{kind}: no TF32 tensor cores known")
    assert _matmul_error("tensorfloat32") > 1e-5


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_case_runs_on_the_accelerator_and_says_so(platform, dtype):
    device = resolve_device(platform)
    row = run_case(registry.get("linear/nonsquare"), dtype, device=device, timing=True,
                   budget_s=0.05)
    assert row.status == "PASS", row.message
    assert row.device == platform and row.ratio is not None
    env = environment(device)
    assert env["platform"] == platform and device.device_kind in env["device"]
