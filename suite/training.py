"""Training on hand-derived gradients: SGD on two spirals, manual backward vs jax.grad.

The same small MLP is trained twice from the same start with full-batch SGD: once with
``jax.grad`` of ``suite.custom_grad.mlp_loss`` (whose VJP is the costate recursion of
``manual.mlp.backprop``) and once with ``jax.grad`` of ``manual.mlp.loss`` (autodiff).
If the hand derivation is the gradient, the two parameter trajectories coincide to
rounding, step after step, and the loss falls. ``report_section`` puts the study in
the mlp section of the report; suite/tests/test_training.py asserts on it.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from manual import mlp
from suite.cases.common import mlp_params
from suite.custom_grad import mlp_loss

CONFIG = dict(activation="tanh", loss="softmax_cross_entropy", l2=1e-4)
WIDTHS = (2, 32, 32, 2)
STEPS = 100
# 0.3 keeps SGD stable: at 0.5 the run reaches the edge of stability near step 87, where
# any perturbation (rounding included) doubles every step, and the two trajectories part
# for a reason that has nothing to do with the gradients.
LEARNING_RATE = 0.3
SEED = 0


def two_spirals(n_per_class, *, turns=1.0, noise=0.05, seed=0, dtype="float64"):
    """Two interleaved spirals in the plane, labels 0 and 1.

    Arm k (k = 0, 1) is r(t) (cos θ, sin θ), θ = 2π·turns·t + kπ, r = t, for t uniform in
    [0.1, 1], plus Gaussian noise of std ``noise``. No straight line separates them.

    Returns:
      x: (2 n_per_class, 2) in ``dtype``, y: (2 n_per_class,) int32.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in (0, 1):
        t = rng.uniform(0.1, 1.0, n_per_class)
        theta = 2 * math.pi * turns * t + k * math.pi
        xs.append(np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1)
                  + noise * rng.normal(size=(n_per_class, 2)))
        ys.append(np.full(n_per_class, k))
    return jnp.asarray(np.concatenate(xs), dtype), jnp.asarray(np.concatenate(ys), jnp.int32)


def sgd(value_fn, params, x, y, *, steps, lr):
    """Full-batch SGD θ ← θ - lr ∇E(θ) with ``jax.value_and_grad(value_fn)``.

    Returns:
      (trajectory, losses): params after each step stacked on a leading axis of length
      ``steps`` (leaf by leaf), and the loss before each step, (steps,).
    """
    value_and_grad = jax.value_and_grad(value_fn)

    def step(theta, _):
        e, g = value_and_grad(theta, x, y)
        theta = jax.tree_util.tree_map(lambda t, d: t - lr * d, theta, g)
        return theta, (theta, e)

    _, (trajectory, losses) = jax.lax.scan(step, params, None, length=steps)
    return trajectory, losses


@dataclasses.dataclass(frozen=True)
class Study:
    losses_manual: np.ndarray    # (steps,) loss before each step, manual gradient
    losses_autodiff: np.ndarray  # (steps,) the same with jax.grad
    final_loss_manual: float     # loss after the last step
    final_loss_autodiff: float
    drift: np.ndarray            # (steps,) ||θ_manual - θ_autodiff|| / ||θ_autodiff||
    accuracy: float              # training accuracy of the manual run's final params


def _flat(trajectory, i):
    return np.concatenate([np.asarray(leaf[i]).ravel() for leaf in jax.tree_util.tree_leaves(trajectory)])


def run_study(*, steps=STEPS, lr=LEARNING_RATE, dtype="float64", seed=SEED):
    """Train twice from the same start (manual gradient, jax.grad) and compare."""
    x, y = two_spirals(100, seed=seed, dtype=dtype)
    params = mlp_params(jax.random.PRNGKey(seed), WIDTHS, dtype)

    def autodiff_value(p, x, y):
        return mlp.loss(p, x, y, **CONFIG)

    train = jax.jit(sgd, static_argnums=0, static_argnames=("steps", "lr"))
    traj_m, losses_m = train(mlp_loss(**CONFIG), params, x, y, steps=steps, lr=lr)
    traj_a, losses_a = train(autodiff_value, params, x, y, steps=steps, lr=lr)
    drift = np.array([np.linalg.norm(_flat(traj_m, i) - _flat(traj_a, i))
                      / np.linalg.norm(_flat(traj_a, i)) for i in range(steps)])
    final_m = jax.tree_util.tree_map(lambda t: t[-1], traj_m)
    final_a = jax.tree_util.tree_map(lambda t: t[-1], traj_a)
    logits = mlp.forward(final_m, x, activation=CONFIG["activation"])
    return Study(
        losses_manual=np.asarray(losses_m), losses_autodiff=np.asarray(losses_a),
        final_loss_manual=float(autodiff_value(final_m, x, y)),
        final_loss_autodiff=float(autodiff_value(final_a, x, y)),
        drift=drift, accuracy=float(jnp.mean(jnp.argmax(logits, axis=1) == y)))


def _plot(study, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from suite.report import atomic_write

    fig, (ax_loss, ax_drift) = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = np.arange(len(study.losses_manual))
    ax_loss.plot(steps, study.losses_manual, label="manual (custom_vjp)")
    ax_loss.plot(steps, study.losses_autodiff, "--", label="jax.grad")
    ax_loss.set_xlabel("SGD step")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    ax_drift.semilogy(steps + 1, np.maximum(study.drift, 1e-18))
    ax_drift.set_xlabel("SGD step")
    ax_drift.set_ylabel("||θ_manual - θ_autodiff|| / ||θ_autodiff||")
    fig.suptitle(f"two spirals, MLP {'-'.join(map(str, WIDTHS))} {CONFIG['activation']}, "
                 f"softmax cross-entropy, float64")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def report_section(out_dir):
    """Markdown for the mlp section of the report (writes mlp_training.png)."""
    study = run_study()
    lines = [
        "### Training on hand-derived gradients",
        "",
        f"Two spirals (200 points), MLP {'-'.join(map(str, WIDTHS))}, "
        f"{CONFIG['activation']}, {CONFIG['loss']}, λ = {CONFIG['l2']:g}, full-batch SGD "
        f"with learning rate {LEARNING_RATE} for {STEPS} steps, float64, from the same "
        "start twice: with the costate recursion as the gradient (suite/custom_grad.py, a "
        "jax.custom_vjp) and with jax.grad.",
        "",
        "| step | loss before it (manual) | loss before it (jax.grad) | drift after it |",
        "|---:|---:|---:|---:|",
    ]
    for i in (0, 24, 49, 74, STEPS - 1):
        lines.append(f"| {i + 1} | {study.losses_manual[i]:.6f} | "
                     f"{study.losses_autodiff[i]:.6f} | {study.drift[i]:.1e} |")
    lines += [
        "",
        f"Loss {study.losses_manual[0]:.4f} → {study.final_loss_manual:.4f} after {STEPS} "
        f"steps (jax.grad: {study.final_loss_autodiff:.4f}); training accuracy "
        f"{study.accuracy:.0%}. The drift is ||θ_manual − θ_autodiff|| / ||θ_autodiff||; "
        "it stays at rounding level because SGD is stable at this learning rate (at 0.5 "
        "the run reaches the edge of stability and any rounding difference doubles per "
        "step, whichever gradient is used). suite/tests/test_training.py asserts drift "
        "<= 1e-10 and a final loss below 0.45 (the best linear classifier reaches 0.569).",
    ]
    try:
        _plot(study, os.path.join(out_dir, "mlp_training.png"))
        lines += ["", "![training](mlp_training.png)"]
    except Exception as err:  # a plot is never worth a lost report
        lines += ["", f"(plot failed: {type(err).__name__}: {err})"]
    return "\n".join(lines)
