"""The planted-bug corpus of check_steps: staged backward passes and their one-line bugs.

``SOURCE`` holds six staged layers, each a forward that marks its steps with
``suite.mark`` and a backward that states each adjoint with ``suite.adjoint``: layer
norm, batch norm, softmax cross-entropy, attention, an LSTM step and a convolution via
im2col. Every backward is correct as written. A ``Bug`` replaces one line of it (the
text ``old``, which occurs once) by ``new``: the step whose own error that makes
(``step``), and the class of mistake it belongs to (``cls``, one of the diagnosis's
stated classes, or None for a mistake outside them). The line is known by construction:
the line of ``new`` in the planted source. ``load(bug)`` writes the source (planted or
not) to a file and imports it, so the adjoint calls carry real file names and lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tempfile

import jax
import numpy as np

from suite import check_steps
from suite.results import Status

SOURCE = '''\
import jax
import jax.numpy as jnp

from suite import adjoint, mark

EPS = 1e-5


def ln_forward(x, gamma, beta):
    mu = mark("mu", x.mean(axis=-1, keepdims=True))
    xmu = mark("xmu", x - mu)
    var = mark("var", (xmu**2).mean(axis=-1, keepdims=True))
    rstd = mark("rstd", (var + EPS) ** -0.5)
    xhat = mark("xhat", xmu * rstd)
    return xhat * gamma + beta


def ln_backward(x, gamma, beta, dy):
    d = x.shape[-1]
    mu = x.mean(axis=-1, keepdims=True)
    xmu = x - mu
    var = (xmu**2).mean(axis=-1, keepdims=True)
    rstd = (var + EPS) ** -0.5
    xhat = xmu * rstd
    dxhat = adjoint("xhat", dy * gamma)
    drstd = adjoint("rstd", (dxhat * xmu).sum(axis=-1, keepdims=True))
    dxmu = adjoint("xmu", dxhat * rstd)
    dvar = adjoint("var", -0.5 * (var + EPS) ** -1.5 * drstd)
    dxmu = dxmu + adjoint("xmu", 2.0 * xmu * dvar / d)
    dmu = adjoint("mu", -dxmu.sum(axis=-1, keepdims=True))
    dx = dxmu + dmu / d
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def bn_forward(x, gamma, beta):
    n = x.shape[0]
    bnmeani = mark("bnmeani", x.sum(axis=0, keepdims=True) / n)
    bndiff = mark("bndiff", x - bnmeani)
    bndiff2 = mark("bndiff2", bndiff**2)
    bnvar = mark("bnvar", bndiff2.sum(axis=0, keepdims=True) / n)
    bnvar_inv = mark("bnvar_inv", (bnvar + EPS) ** -0.5)
    bnraw = mark("bnraw", bndiff * bnvar_inv)
    return gamma * bnraw + beta


def bn_backward(x, gamma, beta, dy):
    n = x.shape[0]
    bndiff = x - x.mean(axis=0, keepdims=True)
    bnvar = (bndiff**2).mean(axis=0, keepdims=True)
    bnvar_inv = (bnvar + EPS) ** -0.5
    bnraw = bndiff * bnvar_inv
    dbnraw = adjoint("bnraw", gamma * dy)
    dbnvar_inv = adjoint("bnvar_inv", (bndiff * dbnraw).sum(axis=0, keepdims=True))
    dbndiff = adjoint("bndiff", bnvar_inv * dbnraw)
    dbnvar = adjoint("bnvar", -0.5 * (bnvar + EPS) ** -1.5 * dbnvar_inv)
    dbndiff2 = adjoint("bndiff2", jnp.ones_like(bndiff) * dbnvar / n)
    dbndiff = dbndiff + adjoint("bndiff", 2.0 * bndiff * dbndiff2)
    dbnmeani = adjoint("bnmeani", -dbndiff.sum(axis=0, keepdims=True))
    dx = dbndiff + jnp.ones_like(dbndiff) * dbnmeani / n
    return dx, (bnraw * dy).sum(axis=0), dy.sum(axis=0)


def ce_forward(x, w, b, labels):
    logits = mark("logits", x @ w + b)
    ex = mark("ex", jnp.exp(logits))
    s = mark("s", ex.sum(axis=1, keepdims=True))
    p = mark("p", ex / s)
    logp = mark("logp", jnp.log(p))
    return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()


def ce_backward(x, w, b, labels, dl):
    n = x.shape[0]
    logits = x @ w + b
    ex = jnp.exp(logits)
    s = ex.sum(axis=1, keepdims=True)
    p = ex / s
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    dlogp = adjoint("logp", -onehot * dl / n)
    dp = adjoint("p", dlogp / p)
    dex = adjoint("ex", dp / s)
    ds = adjoint("s", -(dp * ex / s**2).sum(axis=1, keepdims=True))
    dex = dex + adjoint("ex", ds * jnp.ones_like(ex))
    dlogits = adjoint("logits", dex * ex)
    return dlogits @ w.T, x.T @ dlogits, dlogits.sum(axis=0), None


def att_forward(q, k, v):
    d = q.shape[-1]
    s = mark("s", q @ k.T / jnp.sqrt(d))
    p = mark("p", jax.nn.softmax(s, axis=-1))
    return p @ v


def att_backward(q, k, v, do):
    d = q.shape[-1]
    p = jax.nn.softmax(q @ k.T / jnp.sqrt(d), axis=-1)
    dp = adjoint("p", do @ v.T)
    ds = adjoint("s", p * (dp - (dp * p).sum(axis=-1, keepdims=True)))
    return ds @ k / jnp.sqrt(d), ds.T @ q / jnp.sqrt(d), p.T @ do


def lstm_forward(x, h, c, wx, wh, b):
    hd = h.shape[1]
    z = mark("z", x @ wx + h @ wh + b)
    i = mark("i", jax.nn.sigmoid(z[:, :hd]))
    f = mark("f", jax.nn.sigmoid(z[:, hd:2 * hd]))
    g = mark("g", jnp.tanh(z[:, 2 * hd:3 * hd]))
    o = mark("o", jax.nn.sigmoid(z[:, 3 * hd:]))
    c_new = mark("c_new", f * c + i * g)
    tc = mark("tc", jnp.tanh(c_new))
    return o * tc, c_new


def ds(s):  # the sigmoid's derivative through its value
    return s * (1 - s)


def lstm_backward(x, h, c, wx, wh, b, ct):
    dh, dc = ct
    hd = h.shape[1]
    z = x @ wx + h @ wh + b
    i, f = jax.nn.sigmoid(z[:, :hd]), jax.nn.sigmoid(z[:, hd:2 * hd])
    g, o = jnp.tanh(z[:, 2 * hd:3 * hd]), jax.nn.sigmoid(z[:, 3 * hd:])
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    dtc = adjoint("tc", dh * o)
    do = adjoint("o", dh * tc)
    dc_new = adjoint("c_new", dc + dtc * (1.0 - tc**2))
    di = adjoint("i", dc_new * g)
    df = adjoint("f", dc_new * c)
    dg = adjoint("g", dc_new * i)
    dz = adjoint("z", jnp.concatenate([di * ds(i), df * ds(f), dg * (1 - g**2), do * ds(o)], 1))
    return dz @ wx.T, dz @ wh.T, dc_new * f, x.T @ dz, h.T @ dz, dz.sum(axis=0)


def _im2col(x, kh, kw):
    n, ch, hh, ww = x.shape
    oh, ow = hh - kh + 1, ww - kw + 1
    patches = jnp.stack([x[:, :, a:a + oh, e:e + ow] for a in range(kh) for e in range(kw)],
                        axis=2)
    return patches.transpose(0, 3, 4, 1, 2).reshape(n * oh * ow, ch * kh * kw)


def _col2im(dcols, shape, kh, kw):
    n, ch, hh, ww = shape
    oh, ow = hh - kh + 1, ww - kw + 1
    d = dcols.reshape(n, oh, ow, ch, kh * kw).transpose(0, 3, 4, 1, 2)
    dx = jnp.zeros(shape, dcols.dtype)
    for t, (a, e) in enumerate((a, e) for a in range(kh) for e in range(kw)):
        dx = dx.at[:, :, a:a + oh, e:e + ow].add(d[:, :, t])
    return dx


def conv_forward(x, w, b):
    o, ch, kh, kw = w.shape
    cols = mark("cols", _im2col(x, kh, kw))
    out = mark("out", cols @ w.reshape(o, -1).T + b)
    return jnp.tanh(out)


def conv_backward(x, w, b, dy):
    o, ch, kh, kw = w.shape
    cols = _im2col(x, kh, kw)
    out = cols @ w.reshape(o, -1).T + b
    dout = adjoint("out", dy * (1.0 - jnp.tanh(out) ** 2))
    dcols = adjoint("cols", dout @ w.reshape(o, -1))
    return _col2im(dcols, x.shape, kh, kw), (dout.T @ cols).reshape(w.shape), dout.sum(axis=0)
'''

MODELS = ("ln", "bn", "ce", "att", "lstm", "conv")


def inputs(model: str, seed: int, dtype) -> tuple:
    """The primals of ``model``, from ``seed``, in ``dtype`` (integer labels stay int32)."""
    rng = np.random.default_rng([seed, 19])

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dtype)
    if model == "ln":
        return r(6, 16), (1.0 + r(16, s=0.1)).astype(dtype), r(16, s=0.1)
    if model == "bn":
        return r(12, 5), (1.0 + r(5, s=0.1)).astype(dtype), r(5, s=0.1)
    if model == "ce":
        return r(8, 6), r(6, 5, s=0.5), r(5, s=0.1), rng.integers(0, 5, 8).astype(np.int32)
    if model == "att":
        return r(6, 4), r(6, 4), r(6, 4)
    if model == "lstm":
        return (r(3, 4), r(3, 5, s=0.5), r(3, 5, s=0.5), r(4, 20, s=0.5), r(5, 20, s=0.5),
                r(20, s=0.1))
    if model == "conv":
        return r(2, 2, 5, 5), r(3, 2, 3, 3, s=0.3), r(3, s=0.1)
    raise ValueError(f"inputs: unknown model {model!r}")


@dataclasses.dataclass(frozen=True)
class Bug:
    """One planted line: in ``model``'s backward, ``old`` becomes ``new``."""

    id: str
    model: str
    old: str
    new: str
    step: str
    cls: str | None   # the diagnosis class ("factor N/(N−1)", "sign", ...) or None
    expect: str | None = None  # a string the diagnosis must contain


BUGS = (
    Bug("ln_bessel", "ln", "2.0 * xmu * dvar / d)", "2.0 * xmu * dvar / (d - 1))", "xmu",
        "factor", "N/(N−1)"),
    Bug("ln_var_sign", "ln",
        "-0.5 * (var + EPS) ** -1.5 * drstd", "0.5 * (var + EPS) ** -1.5 * drstd",
        "var", "sign", "sign flipped"),
    Bug("ln_relu", "ln",
        'adjoint("xhat", dy * gamma)', 'adjoint("xhat", jnp.maximum(dy * gamma, 0.0))',
        "xhat", "zero", "zero where it should not be"),
    Bug("ln_mu_mean", "ln",
        "-dxmu.sum(axis=-1, keepdims=True))", "-dxmu.mean(axis=-1, keepdims=True))",
        "mu", "factor", "1/N"),
    Bug("ln_rstd_mean", "ln", "(dxhat * xmu).sum(axis=-1, keepdims=True))",
        "(dxhat * xmu).mean(axis=-1, keepdims=True))", "rstd", "factor", "1/N"),
    Bug("ln_xmu_rstd2", "ln", 'adjoint("xmu", dxhat * rstd)', 'adjoint("xmu", dxhat * rstd**2)',
        "xmu", None),
    Bug("bn_bessel", "bn",
        "jnp.ones_like(bndiff) * dbnvar / n)", "jnp.ones_like(bndiff) * dbnvar / (n - 1))",
        "bndiff2", "factor", "N/(N−1)"),
    Bug("bn_var_sign", "bn", "-0.5 * (bnvar + EPS) ** -1.5 * dbnvar_inv",
        "0.5 * (bnvar + EPS) ** -1.5 * dbnvar_inv", "bnvar", "sign", "sign flipped"),
    Bug("bn_mean_axis", "bn",
        "-dbndiff.sum(axis=0, keepdims=True))", "-dbndiff.sum(axis=1, keepdims=True))",
        "bnmeani", "axis", "summed over the wrong axis"),
    Bug("bn_inv_mean", "bn", "(bndiff * dbnraw).sum(axis=0, keepdims=True))",
        "(bndiff * dbnraw).mean(axis=0, keepdims=True))", "bnvar_inv", "factor", "1/N"),
    Bug("bn_relu", "bn",
        'adjoint("bnraw", gamma * dy)', 'adjoint("bnraw", jnp.maximum(gamma * dy, 0.0))',
        "bnraw", "zero", "zero where it should not be"),
    Bug("bn_diff_extra", "bn", 'adjoint("bndiff", bnvar_inv * dbnraw)',
        'adjoint("bndiff", bnvar_inv * dbnraw + dbnraw.mean(axis=0, keepdims=True))', "bndiff",
        "constant", "error constant along axis 0"),
    Bug("ce_no_mean", "ce", "-onehot * dl / n)", "-onehot * dl)", "logp", "factor",
        "= N × the true adjoint, N = 8"),
    Bug("ce_s_sign", "ce", "-(dp * ex / s**2).sum(axis=1, keepdims=True))",
        "(dp * ex / s**2).sum(axis=1, keepdims=True))", "s", "sign", "sign flipped"),
    Bug("ce_s_axis", "ce", "-(dp * ex / s**2).sum(axis=1, keepdims=True))",
        "-(dp * ex / s**2).sum(axis=0, keepdims=True))", "s", "axis", "summed over the wrong axis"),
    Bug("ce_logits_two", "ce", 'adjoint("logits", dex * ex)', 'adjoint("logits", 2.0 * dex * ex)',
        "logits", "factor", "factor 2"),
    Bug("ce_p_square", "ce", 'adjoint("p", dlogp / p)', 'adjoint("p", dlogp / p**2)', "p", None),
    Bug("att_dp_transposed", "att", 'adjoint("p", do @ v.T)', 'adjoint("p", v @ do.T)', "p",
        "transposed", "transposed"),
    Bug("att_dp_sign", "att", 'adjoint("p", do @ v.T)', 'adjoint("p", -(do @ v.T))', "p", "sign",
        "sign flipped"),
    Bug("att_no_mean", "att",
        "p * (dp - (dp * p).sum(axis=-1, keepdims=True)))", "p * dp)", "s", None),
    Bug("lstm_f_sign", "lstm", 'adjoint("f", dc_new * c)', 'adjoint("f", -dc_new * c)', "f", "sign",
        "sign flipped"),
    Bug("lstm_no_dc", "lstm", 'adjoint("c_new", dc + dtc * (1.0 - tc**2))',
        'adjoint("c_new", dtc * (1.0 - tc**2))', "c_new", None),
    Bug("lstm_i_operand", "lstm",
        'adjoint("i", dc_new * g)', 'adjoint("i", dc_new * c)', "i", None),
    Bug("lstm_o_relu", "lstm",
        'adjoint("o", dh * tc)', 'adjoint("o", jnp.maximum(dh * tc, 0.0))', "o",
        "zero", "zero where it should not be"),
    Bug("lstm_gate_deriv", "lstm", "dg * (1 - g**2)", "dg * g * (1 - g)", "z", None),
    Bug("conv_cols_sign", "conv", 'adjoint("cols", dout @ w.reshape(o, -1))',
        'adjoint("cols", -(dout @ w.reshape(o, -1)))', "cols", "sign", "sign flipped"),
    Bug("conv_cols_ninth", "conv", 'adjoint("cols", dout @ w.reshape(o, -1))',
        'adjoint("cols", dout @ w.reshape(o, -1) / (kh * kw))', "cols", "factor",
        "1/N × the true adjoint, N = 9"),
    Bug("conv_out_relu", "conv", 'adjoint("out", dy * (1.0 - jnp.tanh(out) ** 2))',
        'adjoint("out", jnp.maximum(dy, 0.0) * (1.0 - jnp.tanh(out) ** 2))', "out", "zero",
        "zero where it should not be"),
)

# the reduced corpus of make test (the rest runs under -m slow)
FAST_BUGS = ("ln_bessel",)


def planted_source(bug: Bug | None) -> tuple:
    """(source, the planted line's number or None)."""
    if bug is None:
        return SOURCE, None
    if SOURCE.count(bug.old) != 1:
        raise ValueError(f"planted_source: {bug.id}: the text to replace occurs "
                         f"{SOURCE.count(bug.old)} times")
    src = SOURCE.replace(bug.old, bug.new)
    start = src.index(bug.new)
    return src, src.count("\n", 0, start) + 1


def load(bug: Bug | None, directory: str | None = None):
    """The corpus module with ``bug`` planted (None: correct), and the planted line."""
    src, line = planted_source(bug)
    directory = directory or tempfile.mkdtemp(prefix="steps_corpus_")
    tag = "correct" if bug is None else bug.id
    digest = hashlib.sha1(src.encode()).hexdigest()[:8]
    path = os.path.join(directory, f"staged_{tag}_{digest}.py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(f"staged_{tag}_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, line, path


def functions(module, model: str) -> tuple:
    return getattr(module, f"{model}_forward"), getattr(module, f"{model}_backward")


def same_line(reported: str, path: str, line: int) -> bool:
    """Whether ``reported`` ("file.py:NN", relative to the working directory or absolute)
    names line ``line`` of ``path``."""
    file, _, number = reported.rpartition(":")
    return os.path.realpath(file) == os.path.realpath(path) and number == str(line)


def run_correct(model: str, dtype, seed: int, directory: str | None = None) -> dict:
    """check_steps on a correct backward: the statuses and diagnoses of its steps."""
    module, _, _ = load(None, directory)
    fwd, bwd = functions(module, model)
    with jax.numpy_rank_promotion("allow"):  # user code broadcasts implicitly
        r = check_steps(fwd, bwd, *inputs(model, seed, dtype), seed=seed)
    return {"model": model, "dtype": np.dtype(dtype).name, "seed": seed, "status": str(r.status),
            "failed": [s.name for s in r.steps if s.status is not Status.PASS],
            "diagnoses": [s.diagnosis for s in r.steps if s.diagnosis is not None],
            "steps": len(r.steps), "not_judged": list(r.not_judged)}


def run_bug(bug: Bug, dtype=np.float64, seed: int = 0, directory: str | None = None) -> dict:
    """check_steps on one planted bug: what it found against what was planted."""
    module, line, path = load(bug, directory)
    fwd, bwd = functions(module, bug.model)
    with jax.numpy_rank_promotion("allow"):  # user code broadcasts implicitly
        r = check_steps(fwd, bwd, *inputs(bug.model, seed, dtype), seed=seed)
    first = r.first_wrong
    step_ok = first is not None and first.name == bug.step and same_line(first.line, path, line)
    diag = None if first is None else first.diagnosis
    diag_ok = (diag is None) if bug.cls is None else (diag is not None and bug.expect in diag)
    return {"bug": bug.id, "model": bug.model, "class": bug.cls or "—", "status": str(r.status),
            "first": None if first is None else first.name, "line": None if first is None
            else first.line, "want": f"{bug.step} @ {line}", "step_ok": step_ok,
            "diagnosis": diag, "diag_ok": diag_ok}
