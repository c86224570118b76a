"""The report writer: one DataFrame of rows -> report.md, results.csv and PNG plots.

Layout of ``<out>/<device>/``::

    report.md     verdict line, environment block, summary table, one section per family
    results.csv   one row per (case, dtype), the columns of suite.run.COLUMNS
    <family>.png  normwise error per case and dtype against the tolerance, and the
                  manual/autodiff run-time ratio

Every file is written to a temporary name and renamed into place, so a reader never
sees half a report.
"""

import datetime
import os
import platform
import subprocess
import tempfile

import jax
import numpy as np
import pandas as pd

from suite import cases as registry
from suite import compare as cmp


def atomic_write(path, write):
    """Call ``write(tmp_path)`` and rename the result to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=os.path.dirname(__file__))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=os.path.dirname(__file__)).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device):
    """The facts a reader needs to reproduce the numbers."""
    import jaxlib
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": _git_commit(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": device.platform,
        "device": f"{device.device_kind} ({device})",
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def _fmt(x, spec=".2e"):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    return format(x, spec)


def _ms(x):
    return _fmt(None if x is None or pd.isna(x) else 1e3 * x, ".3g")


def _truth(r):
    if r.truth_manual is None or pd.isna(r.truth_manual):
        return "—"
    return f"{_fmt(r.truth_manual)} / {_fmt(r.truth_autodiff)}"


def verdict(df):
    counts = df["status"].value_counts()
    bad = int(counts.get("FAIL", 0) + counts.get("ERROR", 0))
    head = "PASS" if bad == 0 and len(df) else "FAIL"
    return (f"**Verdict: {head}** — {int(counts.get('PASS', 0))} of {len(df)} rows pass, "
            f"{int(counts.get('FAIL', 0))} fail, {int(counts.get('ERROR', 0))} error.")


def summary_table(df):
    lines = ["| family | dtype | rows | pass | fail | error | worst normwise | tolerance | "
             "median run ratio manual/autodiff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (family, dtype), g in df.groupby(["family", "dtype"], sort=False):
        counts = g["status"].value_counts()
        lines.append(
            f"| {family} | {dtype} | {len(g)} | {int(counts.get('PASS', 0))} | "
            f"{int(counts.get('FAIL', 0))} | {int(counts.get('ERROR', 0))} | "
            f"{_fmt(g['normwise'].max())} | {cmp.tolerance(dtype).normwise:.0e} | "
            f"{_fmt(g['ratio'].median(), '.2f')} |")
    return "\n".join(lines)


def family_table(df):
    lines = ["| case | sizes | dtype | status | worst leaf | normwise | max abs | max rel | "
             "FD witness | float32 vs float64 truth: manual / autodiff | "
             "compile manual / autodiff (ms) | run manual / autodiff (ms) | ratio |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in df.itertuples():
        lines.append(
            f"| {r.case} | {r.sizes} | {r.dtype} | {r.status} | `{r.leaf or ''}` | "
            f"{_fmt(r.normwise)} | {_fmt(r.max_abs)} | {_fmt(r.max_rel)} | "
            f"{_fmt(r.fd_error)} | {_truth(r)} | {_ms(r.compile_manual_s)} / {_ms(r.compile_autodiff_s)} | "
            f"{_ms(r.run_manual_s)} / {_ms(r.run_autodiff_s)} | {_fmt(r.ratio, '.2f')} |")
    problems = df[df["status"] != "PASS"]
    if len(problems):
        lines += ["", "Failures and errors:", ""]
        lines += [f"- `{r.case}` {r.dtype} **{r.status}**: {r.message}" for r in problems.itertuples()]
    return "\n".join(lines)


def plot_family(df, family, path):
    """Normwise error (log) per case and dtype with the tolerances, and run-time ratios."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df["case"]))
    fig, (ax_err, ax_ratio) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.28 * len(names) + 1.5)))
    y = np.arange(len(names))
    for k, dtype in enumerate(sorted(df["dtype"].unique())):
        g = df[df["dtype"] == dtype].set_index("case").reindex(names)
        err = g["normwise"].astype(float).clip(lower=1e-18)
        ax_err.scatter(err, y + 0.15 * (k - 0.5), s=14, label=dtype)
        ax_err.axvline(cmp.tolerance(dtype).normwise, ls="--", lw=0.8, color=f"C{k}")
        ax_ratio.barh(y + 0.4 * (k - 0.5), g["ratio"].astype(float), height=0.4, label=dtype)
    ax_err.set_xscale("log")
    ax_err.set_xlabel("normwise error ||manual - autodiff|| / ||autodiff|| (0 plotted at 1e-18)")
    ax_ratio.axvline(1.0, color="k", lw=0.8)
    ax_ratio.set_xlabel("run time manual / autodiff (compiled, median)")
    for ax in (ax_err, ax_ratio):
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    ax_ratio.set_yticklabels([])
    fig.suptitle(f"{family}: dashed lines are the tolerances")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def render(df, env, out_dir):
    """The Markdown text of the report; writes the plots into ``out_dir`` on the way."""
    parts = [f"# backprop-suite report — {env['platform']}", "", verdict(df), "",
             "## Environment", "", "```"]
    parts += [f"{k:<11} {v}" for k, v in env.items()]
    parts += ["```", "", "## Summary", "", summary_table(df), "",
              "How to read this: each row compares the hand-derived derivative (manual/) with "
              "JAX autodiff (reference/) on the same inputs. *normwise* is "
              "||manual − autodiff|| / ||autodiff|| for the worst output leaf; a row passes "
              "when it is within the dtype's tolerance and every element is inside the "
              "allclose band (suite/compare.py). *FD witness* is the float64 finite-difference "
              "check along a random direction, relative to the derivative's norm. For float32 rows, "
              "*float32 vs float64 truth* gives the normwise error of each side against the "
              "autodiff result on the same inputs widened to float64: the manual code should be "
              "as close to the truth as autodiff is. Times are "
              "compiled (jax.jit), medians of interleaved runs; *ratio* < 1 means the manual "
              "code is faster. On a CPU only the ratios mean much.", ""]
    for family in registry.families():
        rows = df[df["family"] == family.name]
        if rows.empty:
            continue
        parts += [f"## {family.name} — {family.title}", "", family.description, ""]
        plot = f"{family.name}.png"
        try:
            plot_family(rows, family.name, os.path.join(out_dir, plot))
            parts += [f"![{family.name}]({plot})", ""]
        except Exception as err:  # a plot is never worth a lost report
            parts += [f"(plot failed: {type(err).__name__}: {err})", ""]
        parts += [family_table(rows), ""]
        if family.extra_section is not None:
            try:
                parts += [family.extra_section(rows, out_dir), ""]
            except Exception as err:
                parts += [f"**ERROR** in the {family.name} extra section: "
                          f"{type(err).__name__}: {err}", ""]
    return "\n".join(parts)


def write_report(df, out_dir, device):
    """Write report.md and results.csv (and plots) under ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    text = render(df, environment(device), out_dir)
    md, csv = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "results.csv")
    atomic_write_text(md, text)
    atomic_write(csv, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))
    return md, csv
