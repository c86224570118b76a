"""Grading the stagewise second-order costates Ω_l on second-order truths (no step checker).

The learner writes one layer of Mizutani and Dreyfus' recursion (manual/stagewise.py)::

    Ω_L = ℓ''(z_L) / N
    Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag(f_l''(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ))
    H_ll = Σₙ (â_{l-1} â_{l-1}ᵀ) ⊗ Ω_l

as three functions, ``omega_top(z_L, y)``, ``omega_step(z_l, w_next, delta_next,
omega_next)`` and ``hessian_block(a_prev, omega_l)``. The grader runs them down a
three-layer tanh network with a softmax cross-entropy loss and judges:

- each Ω_l against its truth, the per-sample blocks of ``jax.hessian`` of the loss with
  respect to z_l (the network run forward from z_l); Ω_l is "inherited" wrong when
  ``omega_step`` fed the true Ω_{l+1} gives the true Ω_l, so the first wrong Ω_l named is
  the one the learner's own step gets wrong;
- the layer block H_22 against ``suite.check_hessian`` of the loss in that layer's Ŵ_2.

A tolerance of 1e-8 (relative, Frobenius) separates right from wrong: every quantity is
float64 and a few products deep, so a right answer sits near 1e-15, and the mistakes
the diagnosis names are O(1) relative errors. The diagnosis names, when it fits: a
missing f'' term (the Gauss-Newton part alone), a sign, a factor N or 1/N, a transpose.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from suite import check as checker
from suite.learn import catalog
from suite.learn.cells import Locator
from suite.learn.grading import Blank, Grade, check_hint, raised, unfilled
from suite.learn.hints import ladder

__all__ = ["TOL", "network", "grade_omega"]

TOL = 1e-8


def network(inputs: tuple) -> dict:
    """The forward of the graded network: z_l, a_l, δ_l for (x, y, W1, b1, W2, b2, W3, b3)."""
    x, y, *params = inputs
    ws, bs = params[0::2], params[1::2]
    a, zs, acts = x, [], [x]
    for l, (w, b) in enumerate(zip(ws, bs, strict=True)):
        z = a @ w + b
        zs.append(z)
        a = jnp.tanh(z) if l < len(ws) - 1 else z
        acts.append(a)
    n = x.shape[0]
    deltas = [None] * len(ws)
    deltas[-1] = (jax.nn.softmax(zs[-1], axis=1) - y) / n
    for l in range(len(ws) - 2, -1, -1):
        deltas[l] = (1 - jnp.tanh(zs[l]) ** 2) * (deltas[l + 1] @ ws[l + 1].T)
    return dict(x=x, y=y, w=ws, b=bs, z=zs, a=acts, delta=deltas)


def _loss_from(net: dict, l: int) -> Callable:
    """E as a function of z_l (layers above l run forward from it)."""
    def loss(z):
        for m in range(l + 1, len(net["w"])):
            z = jnp.tanh(z) @ net["w"][m] + net["b"][m]
        return -jnp.mean(jnp.sum(net["y"] * jax.nn.log_softmax(z, axis=1), axis=1))
    return loss


def _true_omega(net: dict, l: int):
    z = net["z"][l]
    h = jax.hessian(_loss_from(net, l))(z)                 # (N, n, N, n)
    idx = jnp.arange(z.shape[0])
    return h[idx, :, idx, :]                               # per-sample blocks (N, n, n)


def _error(got, true) -> float:
    got, true = np.asarray(got, float), np.asarray(true, float)
    return float(np.linalg.norm(got - true) / max(np.linalg.norm(true), 1e-300))


def _diagnose(got, true, gauss_newton=None, n: int = 1) -> str | None:
    got, true = np.asarray(got, float), np.asarray(true, float)
    if gauss_newton is not None and _error(got, gauss_newton) < TOL:
        return ("consistent with the Gauss-Newton part only: the term "
                "diag(f''(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)) is missing")
    if got.ndim == 3 and got.shape == true.shape and \
            _error(np.swapaxes(got, 1, 2), true) < TOL:
        return "consistent with transposed"
    t, g = true.ravel(), got.ravel()
    if t @ t == 0:
        return None
    r = float(g @ t / (t @ t))
    if _error(g, r * t) < TOL:
        for label, value in (("sign flipped", -1.0), (f"a factor N (N = {n})", n),
                             (f"a factor 1/N (N = {n})", 1 / n), ("a factor 2", 2.0),
                             ("a factor 1/2", 0.5)):
            if abs(r - value) < 1e-6 * abs(value):
                return f"consistent with {label}"
    if not np.any(g) and np.any(t):
        return "consistent with zero where it should not be"
    return None


def grade_omega(name: str, omega_top: Callable, omega_step: Callable,
                hessian_block: Callable, *, hint: int = 1,
                cells: list[str] | None = None) -> Grade:
    """Grade the learner's Ω recursion and layer block (the module doc has the rule).

    Args:
      name: the exercise (``omega``).
      omega_top: omega_top(z_L, y) -> Ω_L, (N, n_L, n_L).
      omega_step: omega_step(z_l, w_next, delta_next, omega_next) -> Ω_l, (N, n_l, n_l).
      hessian_block: hessian_block(a_prev, omega_l) -> H_ll, (P_l, P_l) in Ŵ_l row-major.
      hint: 1..4, the rungs of the hint ladder to show.
      cells: the notebook's code cells (as for suite.learn.grading.grade).
    """
    ex, hint = catalog.get(name), check_hint(hint)
    locator = Locator(cells)
    blanks = [b for f in (omega_top, omega_step, hessian_block) for b in unfilled(f)]
    if blanks:
        return Grade(name, "NOT ATTEMPTED", [
            f"  {len(blanks)} of {len(ex.steps)} steps still blank: {', '.join(blanks)}"])
    with jax.enable_x64(True):
        net = network(ex.inputs())
        L, n = len(net["w"]), net["x"].shape[0]
        truth = [_true_omega(net, l) for l in range(L)]
        mine: list = [None] * L
        try:
            mine[L - 1] = omega_top(net["z"][L - 1], net["y"])
            for l in range(L - 2, -1, -1):
                mine[l] = omega_step(net["z"][l], net["w"][l + 1], net["delta"][l + 1],
                                     mine[l + 1])
                _require_shape(f"omega_step at l = {l + 1}", mine[l], truth[l].shape)
            _require_shape("omega_top", mine[L - 1], truth[L - 1].shape)
        except Blank as error:
            return Grade(name, "NOT ATTEMPTED", [f"  {error}"])
        except _ShapeError as error:
            return Grade(name, "FAIL", [f"  {error}"])
        except Exception as error:  # the learner's code: reported, never a suite traceback
            return Grade(name, "ERROR", raised("your Ω code", error, locator))
        wrong = [l for l in range(L - 1, -1, -1) if _error(mine[l], truth[l]) > TOL]
        if wrong:
            return _omega_report(ex, net, truth, mine, wrong, omega_step, locator, hint, n)
        return _block_report(ex, net, omega_top, omega_step, hessian_block, locator, hint, L)


class _ShapeError(ValueError):
    pass


def _require_shape(what: str, got, expected) -> None:
    if jnp.shape(got) != tuple(expected):
        raise _ShapeError(f"{what}: expected shape {tuple(expected)}, returned {jnp.shape(got)}")


def _omega_report(ex, net, truth, mine, wrong, omega_step, locator, hint, n) -> Grade:
    L = len(truth)
    first = wrong[0]
    for l in wrong:  # the first Ω_l whose own step is wrong, fed the true Ω_{l+1}
        if l == L - 1 or _error(omega_step(net["z"][l], net["w"][l + 1], net["delta"][l + 1],
                                           truth[l + 1]), truth[l]) > TOL:
            first = l
            break
    step = ex.step("omega_L" if first == L - 1 else "omega_l")
    gauss_newton = None
    if first < L - 1:
        d = 1 - jnp.tanh(net["z"][first]) ** 2
        w = net["w"][first + 1]
        gauss_newton = d[:, :, None] * jnp.einsum("kr,nrs,qs->nkq", w, truth[first + 1], w) \
            * d[:, None, :]
    diagnosis = _diagnose(mine[first], truth[first], gauss_newton, n)
    inherited = tuple(f"Ω_{l + 1}" for l in wrong if l < first and _error(omega_step(
        net["z"][l], net["w"][l + 1], net["delta"][l + 1], truth[l + 1]), truth[l]) <= TOL)
    return Grade(ex.name, "FAIL", ladder(
        step, f"{step.name} (Ω_{first + 1}, l = {first + 1})",
        locator.assignment(step.name), diagnosis, hint, inherited=inherited,
        detail=f"relative error {_error(mine[first], truth[first]):.2g} against the "
               f"Hessian of E in z_{first + 1}"))


def _block_report(ex, net, omega_top, omega_step, hessian_block, locator, hint, L) -> Grade:
    l = 1  # the block of the middle layer, Ŵ_2: both of its neighbours are layers
    x, y = net["x"], net["y"]
    w_hat = jnp.concatenate([net["w"][l], net["b"][l][None, :]], axis=0)

    def with_layer(w_hat):
        params = [v for pair in zip(net["w"], net["b"], strict=True) for v in pair]
        params[2 * l], params[2 * l + 1] = w_hat[:-1], w_hat[-1]
        return network((x, y, *params))

    def loss(w_hat):
        z = with_layer(w_hat)["z"][-1]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z, axis=1), axis=1))

    def block(w_hat):
        moved = with_layer(w_hat)
        omega = omega_top(moved["z"][L - 1], y)
        for m in range(L - 2, l - 1, -1):
            omega = omega_step(moved["z"][m], moved["w"][m + 1], moved["delta"][m + 1], omega)
        return hessian_block(moved["a"][l], omega)

    try:
        got = block(w_hat)
        _require_shape("hessian_block", got, (w_hat.size, w_hat.size))
        result = checker.check_hessian(loss, block, w_hat)
    except Blank as error:
        return Grade(ex.name, "NOT ATTEMPTED", [f"  {error}"])
    except _ShapeError as error:
        return Grade(ex.name, "FAIL", [f"  {error}"])
    except Exception as error:
        return Grade(ex.name, "ERROR", raised("hessian_block", error, locator))
    if result.passed:
        return Grade(ex.name, "PASS", [f"  Ω_1..Ω_{L} right; the block H_22 passes "
                                       "check_hessian"])
    step = ex.step("h_l")
    truth = jax.hessian(loss)(w_hat).reshape(w_hat.size, w_hat.size)
    diagnosis = _diagnose(got, truth, None, x.shape[0])
    return Grade(ex.name, "FAIL", ladder(step, f"{step.name} (H_22)", locator.assignment(
        step.name), diagnosis, hint, detail="check_hessian: " + str(result).splitlines()[0]))
