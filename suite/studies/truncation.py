"""Study: how far truncated and randomized BPTT land from full BPTT (d2l.ai 9.7).

One fixed vanilla-RNN problem (T=50, N=4, D=3, H=8, float64, a contractive recurrence).
For regular truncation the normwise distance ||g_k − g|| / ||g|| from the full gradient g
is its bias, listed for k = 1, 2, 5, 10, 25. Randomized truncation (Tallec & Ollivier;
step weights ξ_t = 0 or 1/π) is unbiased: one draw is far off, but the mean of K draws
approaches g, within its 5-sigma bound 5 sqrt(Σ_j s_j² / K) / ||g|| from the per-draw
sample standard deviations s_j.

Checks (the study's verdict):
    unbiased pi=…   the mean of K draws lies within its 5-sigma bound of full BPTT
    bias shrinks    the bias at k = 25 is below the bias at k = 1 (longer windows carry
                    more of the gradient)

``quick`` uses K = 256 draws instead of 2000.
"""

import jax
import jax.numpy as jnp

from manual import rnn
from suite import plots
from suite.cases.rnn import PRIMALS, builder
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study

__all__ = ["SIZES", "TRUNCATIONS", "PIS", "run", "render", "STUDY"]

SIZES = dict(t=50, n=4, d=3, h=8)
TRUNCATIONS = (1, 2, 5, 10, 25)
PIS = (0.5, 0.8)
KEYS, QUICK_KEYS = 2000, 256


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def run(*, quick: bool = False, device=None) -> Outcome:
    """Bias of each truncation, and the randomized estimator's mean against its bound."""
    del device
    keys = QUICK_KEYS if quick else KEYS
    t = SIZES["t"]
    inputs = builder(t, SIZES["n"], SIZES["d"], SIZES["h"])(jax.random.PRNGKey(0), "float64")
    args = (*(inputs[k] for k in PRIMALS), inputs["dhs"])
    full = _flat(rnn.backward(*args))

    def dist(g):
        return float(jnp.linalg.norm(g - full) / jnp.linalg.norm(full))

    table = [dict(strategy=f"truncation={k}", k=k, pi=None,
                  distance=dist(_flat(rnn.backward(*args, truncation=k))), bound=None)
             for k in TRUNCATIONS]
    checks = []
    for pi in PIS:
        draw = jax.jit(jax.vmap(lambda key, pi=pi: _flat(rnn.backward(
            *args, xi=rnn.randomized_weights(key, t, pi, dtype=jnp.float64)))))
        grads = draw(jax.random.split(jax.random.PRNGKey(1), keys))
        bound = 5 * float(jnp.sqrt(jnp.sum(jnp.var(grads, axis=0, ddof=1)) / keys)
                          / jnp.linalg.norm(full))
        mean = dist(grads.mean(0))
        table.append(dict(strategy=f"randomized pi={pi}, one draw", k=None, pi=pi,
                          distance=dist(grads[0]), bound=None))
        table.append(dict(strategy=f"randomized pi={pi}, mean of {keys}", k=None, pi=pi,
                          distance=mean, bound=bound))
        checks.append(Check(f"unbiased pi={pi}", mean <= bound,
                            f"mean of {keys} draws at {mean:.3e} from full BPTT, "
                            f"5-sigma bound {bound:.3e}"))
    bias = {r["k"]: r["distance"] for r in table if r["k"] is not None}
    checks.append(Check("bias shrinks", bias[TRUNCATIONS[-1]] < bias[TRUNCATIONS[0]],
                        f"bias {bias[TRUNCATIONS[0]]:.3e} at k={TRUNCATIONS[0]}, "
                        f"{bias[TRUNCATIONS[-1]]:.3e} at k={TRUNCATIONS[-1]}"))
    figures = {f"bias_k{k}": v for k, v in bias.items()}
    figures.update(keys=keys, **{f"mean_distance_pi{r['pi']}": r["distance"]
                                 for r in table if r["bound"] is not None})
    return Outcome(figures=figures, checks=checks, table=table)


def _plot(table, path):
    fig, ax = plots.figure(
        width=8, height=3.6,
        title=f"Distance from full BPTT, vanilla RNN T={SIZES['t']}, N={SIZES['n']}, "
              f"H={SIZES['h']}, float64")
    regular = [r for r in table if r["k"] is not None]
    ax.semilogy([r["k"] for r in regular], [r["distance"] for r in regular], "o-",
                label="truncation=k (bias)")
    for j, pi in enumerate(PIS):
        rows = [r for r in table if r["pi"] == pi]
        one, mean = rows[0], rows[1]
        ax.axhline(one["distance"], color=f"C{j + 1}", ls=":", lw=1,
                   label=f"randomized π={pi}: one draw")
        ax.axhline(mean["distance"], color=f"C{j + 1}", ls="-", lw=1,
                   label=f"randomized π={pi}: mean of draws")
        ax.axhline(mean["bound"], color=f"C{j + 1}", ls="--", lw=0.8,
                   label=f"π={pi}: 5σ bound of the mean")
    ax.set_xlabel("truncation length k (steps)")
    ax.set_ylabel("||g − g_full|| / ||g_full||")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return plots.save(fig, path)


def render(result: StudyResult, out_dir: str) -> str:
    """The report's text: distance per strategy, and the plot."""
    lines = [f"T={SIZES['t']}, N={SIZES['n']}, D={SIZES['d']}, H={SIZES['h']}, float64: "
             "normwise distance of each gradient from full BPTT; randomized truncation over "
             f"K={result.figures['keys']} keys.", "",
             "| strategy | distance from full BPTT | 5-sigma bound of the mean |",
             "|---|---:|---:|"]
    for r in result.outcome.table:
        bound = "—" if r["bound"] is None else f"{r['bound']:.3e}"
        lines.append(f"| {r['strategy']} | {r['distance']:.3e} | {bound} |")
    lines += ["", f"![truncation]({_plot(result.outcome.table, f'{out_dir}/rnn_truncation.png')})"]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="truncation", family="rnn",
    title="Truncated and randomized BPTT against full BPTT",
    run=run, render=render))
