"""staged_batchnorm.py with one planted bug: the Bessel mistake in the bndiff2 step.

The forward divides the variance by N (the biased variance of training mode); the
backward of bnvar = (1/N) Σ_n bndiff2 divides by N - 1 instead. check_steps names the
step (bndiff2), its line, and a factor N/(N−1) with N = 32, the batch axis.

Check it from the repository root with either of

    backprop-suite check examples/staged_batchnorm_buggy.py
    python examples/staged_batchnorm_buggy.py

The layer (batch of N rows, training mode, biased variance) and its steps:

    hprebn = x w                     bnmeani = (1/N) Σ_n hprebn
    bndiff = hprebn - bnmeani        bndiff2 = bndiff²
    bnvar = (1/N) Σ_n bndiff2        bnvar_inv = (bnvar + eps)^(-1/2)
    bnraw = bndiff · bnvar_inv       hpreact = γ · bnraw + β
    h = tanh(hpreact)

and, backwards, for an output cotangent dh:

    dhpreact = (1 - h²) dh           dbnraw = γ dhpreact
    dγ = Σ_n bnraw dhpreact          dβ = Σ_n dhpreact
    dbnvar_inv = Σ_n bndiff dbnraw   dbndiff = bnvar_inv dbnraw   (first use of bndiff)
    dbnvar = -½ (bnvar + eps)^(-3/2) dbnvar_inv
    dbndiff2 = (1/N) dbnvar          dbndiff += 2 bndiff dbndiff2  (second use)
    dbnmeani = -Σ_n dbndiff          dhprebn = dbndiff + (1/N) dbnmeani
    dx = dhprebn wᵀ,  dw = xᵀ dhprebn

bndiff is used twice, so it gets two ``adjoint`` calls: check_steps sums them.
"""

import jax.numpy as jnp
import numpy as np

from suite import adjoint, check_steps, mark

EPS = 1e-5


def forward(x, w, gamma, beta):
    n = x.shape[0]
    hprebn = mark("hprebn", x @ w)
    bnmeani = mark("bnmeani", hprebn.sum(axis=0, keepdims=True) / n)
    bndiff = mark("bndiff", hprebn - bnmeani)
    bndiff2 = mark("bndiff2", bndiff**2)
    bnvar = mark("bnvar", bndiff2.sum(axis=0, keepdims=True) / n)
    bnvar_inv = mark("bnvar_inv", (bnvar + EPS) ** -0.5)
    bnraw = mark("bnraw", bndiff * bnvar_inv)
    hpreact = mark("hpreact", gamma * bnraw + beta)
    return mark("h", jnp.tanh(hpreact))


def backward(x, w, gamma, beta, dy):
    n = x.shape[0]
    hprebn = x @ w
    bndiff = hprebn - hprebn.mean(axis=0, keepdims=True)
    bnvar = (bndiff**2).mean(axis=0, keepdims=True)
    bnvar_inv = (bnvar + EPS) ** -0.5
    bnraw = bndiff * bnvar_inv
    h = jnp.tanh(gamma * bnraw + beta)
    dh = adjoint("h", dy)
    dhpreact = adjoint("hpreact", (1.0 - h**2) * dh)
    dgamma = (bnraw * dhpreact).sum(axis=0)
    dbeta = dhpreact.sum(axis=0)
    dbnraw = adjoint("bnraw", gamma * dhpreact)
    dbnvar_inv = adjoint("bnvar_inv", (bndiff * dbnraw).sum(axis=0, keepdims=True))
    dbndiff = adjoint("bndiff", bnvar_inv * dbnraw)
    dbnvar = adjoint("bnvar", -0.5 * (bnvar + EPS) ** -1.5 * dbnvar_inv)
    dbndiff2 = adjoint("bndiff2", jnp.ones_like(bndiff) * dbnvar / (n - 1))  # BUG: Bessel
    dbndiff = dbndiff + adjoint("bndiff", 2.0 * bndiff * dbndiff2)
    dbnmeani = adjoint("bnmeani", -dbndiff.sum(axis=0, keepdims=True))
    dhprebn = adjoint("hprebn", dbndiff + jnp.ones_like(dbndiff) * dbnmeani / n)
    return dhprebn @ w.T, x.T @ dhprebn, dgamma, dbeta


rng = np.random.default_rng(0)
x = rng.standard_normal((32, 16))
w = rng.standard_normal((16, 24)) / 4.0
gamma = 1.0 + 0.1 * rng.standard_normal(24)
beta = 0.1 * rng.standard_normal(24)

# float64 numpy inputs are checked in float64; float32 in float32 and against float64
results = [
    check_steps(forward, backward, x, w, gamma, beta, name="staged batchnorm float64"),
    check_steps(forward, backward, *(a.astype(np.float32) for a in (x, w, gamma, beta)),
                name="staged batchnorm float32"),
]

if __name__ == "__main__":
    for result in results:
        print(result, end="\n\n")
