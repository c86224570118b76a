"""The report writer: ``Results`` -> report.md, results.csv, results.json and PNG plots.

Layout of the output folder (``backprop-suite report`` uses ``<out>/<device>/``,
``--quick`` ``<out>/<device>-quick/``)::

    report.md      verdict line, environment (with the commit), summary, method (the
                   tolerance table), one section per family: plot, table, its studies
    results.csv    one row per (case, dtype) (suite.results.COLUMNS), then one per study
    results.json   the environment (with jax.print_environment_info), the verdict, every
                   row and every study (figures, checks, table)
    <family>.png   normwise error per case and dtype against the tolerance, and the
                   manual/reference run-time ratio; studies add their own plots

The writer only writes: every number was computed in the run phase (suite.run). A
study's renderer that raises turns that study into an ERROR (it counts in the verdict);
a family plot that fails is noted in the text. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from suite import compare as cmp
from suite import plots
from suite.cases import Family, families
from suite.io import atomic_write, atomic_write_text
from suite.results import COLUMNS, Results, Row, Status, StudyResult

__all__ = ["fmt", "verdict", "render", "write_report", "study_row"]

README_HINT = "docs/design.md"


def fmt(x: Any, spec: str = ".2e") -> str:
    """A number for a table: ``spec``-formatted, or "—" for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def _ms(x: float | None) -> str:
    return fmt(None if x is None else 1e3 * x, ".3g")


def _counts(statuses: Sequence[Status]) -> dict[Status, int]:
    return {s: sum(1 for t in statuses if t is s) for s in Status}


def verdict(results: Results) -> str:
    """One line: PASS only if no row and no study is FAIL or ERROR (and there is one)."""
    rows, studies = _counts([r.status for r in results.rows]), _counts(
        [s.status for s in results.studies])
    head = "PASS" if results.passed else "FAIL"
    text = (f"**Verdict: {head}** — {rows[Status.PASS]} of {len(results.rows)} rows pass, "
            f"{rows[Status.FAIL]} fail, {rows[Status.ERROR]} error")
    if results.studies:
        text += (f"; {studies[Status.PASS]} of {len(results.studies)} studies pass, "
                 f"{studies[Status.FAIL]} fail, {studies[Status.ERROR]} error")
    return text + "."


def _frame(rows: Sequence[Row]) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in rows], columns=list(COLUMNS))


def _summary_table(df: pd.DataFrame, studies: Sequence[StudyResult]) -> str:
    lines = ["| family | dtype | rows | pass | fail | error | worst normwise | tolerance | "
             "median run ratio manual/reference |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (family, dtype), g in df.groupby(["family", "dtype"], sort=False):
        counts = g["status"].value_counts()
        lines.append(
            f"| {family} | {dtype} | {len(g)} | {int(counts.get('PASS', 0))} | "
            f"{int(counts.get('FAIL', 0))} | {int(counts.get('ERROR', 0))} | "
            f"{fmt(g['normwise'].astype(float).max())} | "
            f"{_row_tolerance(dtype)} | "
            f"{fmt(g['ratio'].astype(float).median(), '.2f')} |")
    if studies:
        lines += ["", "| study | family | status | seconds | message |", "|---|---|---|---:|---|"]
        lines += [f"| {s.name} | {s.family} | {s.status} | {fmt(s.seconds, '.1f')} | "
                  f"{s.message or ''} |" for s in studies]
    return "\n".join(lines)


def _row_tolerance(dtype: str) -> str:
    """The table's normwise tolerance for ``dtype`` ("—" for a row without one)."""
    return f"{cmp.TOLERANCES[dtype].normwise:.0e}" if dtype in cmp.TOLERANCES else "—"


def _method() -> str:
    lines = [
        "Each row compares the hand-derived derivative (manual/) with its reference "
        "(reference/: JAX autodiff of the forward) on the same inputs. For every output leaf "
        "the comparison measures the max absolute error, the max relative error (denominator "
        "floored at 1e-3 of the leaf's largest entry), the normwise error "
        "||manual − reference|| / ||reference|| and the fraction of entries outside the "
        "allclose band |a − b| <= atol·max|b| + rtol·|b|. A row passes when the worst leaf's "
        "normwise error is within the dtype's tolerance, no entry is outside the band, and "
        "(float64 rows of cases with a scalar objective) the finite-difference witness "
        "agrees. One table, keyed by dtype (suite/compare.py); u is the unit roundoff:", "",
        "| dtype | normwise | rtol | atol (× leaf scale) | normwise in u | why |",
        "|---|---:|---:|---:|---:|---|"]
    for name, tol in cmp.TOLERANCES.items():
        u = cmp.unit_roundoff(name)  # np.finfo knows no bfloat16
        lines.append(f"| {name} | {tol.normwise:.0e} | {tol.rtol:.0e} | {tol.atol:.0e} | "
                     f"{tol.normwise / u:.0f} | {tol.why} |")
    lines += [
        "", "The finite-difference witness (float64; Richardson-extrapolated central "
        "differences along a random unit direction, reference/finite_diff.py) must agree with "
        "the manual derivative to " + ", ".join(
            f"{v:.0e} (order {k})" for k, v in cmp.FD_TOLERANCE.items())
        + " of the derivative's norm: it shares no code with either side and catches the day "
        "both share a mistake. For float32 rows, *float32 vs float64 truth* gives the "
        "normwise error of each side against the reference evaluated in float64 on the same "
        "inputs widened: manual code should be as close to the truth as autodiff is. Times "
        "are of jit-compiled code: compile once, then the median of interleaved runs; *ratio* "
        "< 1 means the manual code is faster. On a CPU only the ratios mean much. Studies "
        "carry their own checks; a failed check is a FAIL that counts in the verdict. "
        f"The full contract: {README_HINT}."]
    return "\n".join(lines)


def _truth(r: pd.Series) -> str:
    if r.truth_manual is None or pd.isna(r.truth_manual):
        return "—"
    return f"{fmt(r.truth_manual)} / {fmt(r.truth_reference)}"


def _family_table(df: pd.DataFrame) -> str:
    lines = ["| case | sizes | dtype | status | worst leaf | normwise | max abs | max rel | "
             "FD witness | float32 vs float64 truth: manual / reference | "
             "compile manual / reference (ms) | run manual / reference (ms) | ratio |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in df.itertuples():
        lines.append(
            f"| {r.case} | {r.sizes} | {r.dtype} | {r.status} | `{r.leaf or ''}` | "
            f"{fmt(r.normwise)} | {fmt(r.max_abs)} | {fmt(r.max_rel)} | {fmt(r.fd_error)} | "
            f"{_truth(r)} | {_ms(r.compile_manual_s)} / {_ms(r.compile_reference_s)} | "
            f"{_ms(r.run_manual_s)} / {_ms(r.run_reference_s)} | {fmt(r.ratio, '.2f')} |")
    problems = df[df["status"] != "PASS"]
    if len(problems):
        lines += ["", "Failures and errors:", ""]
        lines += [f"- `{r.case}` {r.dtype} **{r.status}**: {r.message}"
                  for r in problems.itertuples()]
    return "\n".join(lines)


def _plot_family(df: pd.DataFrame, family: Family, path: str) -> str:
    """Normwise error (log) per case and dtype with the tolerances, and run-time ratios."""
    names = list(dict.fromkeys(df["case"]))
    timed = df["ratio"].notna().any()
    fig, axes = plots.figure(
        1, 2 if timed else 1, width=12 if timed else 8, height=max(3.0, 0.22 * len(names) + 1.6),
        title=f"{family.name}: {family.title}\nnormwise error against the reference "
              "(dashed: the dtype's tolerance; |: the row's own judged tolerance)"
              + (" and run-time ratio" if timed else ""))
    ax_err, ax_ratio = (axes if timed else (axes, None))
    y = np.arange(len(names))
    for k, dtype in enumerate(sorted(df["dtype"].unique())):
        g = df[df["dtype"] == dtype].set_index("case").reindex(names)
        err = g["normwise"].astype(float).clip(lower=1e-18)
        ax_err.scatter(err, y + 0.15 * (k - 0.5), s=14, label=dtype, color=f"C{k}")
        ax_err.axvline(cmp.tolerance(dtype).normwise, ls="--", lw=0.8, color=f"C{k}")
        if "tol_normwise" in g:  # a checker row is judged by its own widened tolerance
            ax_err.scatter(g["tol_normwise"].astype(float), y + 0.15 * (k - 0.5), s=30,
                           marker="|", color=f"C{k}")
        if timed:
            ax_ratio.barh(y + 0.4 * (k - 0.5), g["ratio"].astype(float), height=0.4,
                          label=dtype, color=f"C{k}")
    ax_err.set_xscale("log")
    # two short lines: on one line each, the two panels' labels ran into each other
    ax_err.set_xlabel("normwise error ||manual − reference|| / ||reference||\n"
                      "(dimensionless; 0 plotted at 1e-18)")
    for ax in (ax_err, ax_ratio) if timed else (ax_err,):
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=6 if len(names) > 40 else 7)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.legend(fontsize=7, loc="lower right")
    if timed:
        ax_ratio.axvline(1.0, color="k", lw=0.8)
        ax_ratio.set_xlabel("run time manual / reference\n(compiled, median; < 1: manual faster)")
        ax_ratio.set_yticklabels([])
    return plots.save(fig, path)


def _render_study(study: StudyResult, out_dir: str) -> str:
    head = f"### Study: {study.title}"
    status = f"**{study.status}**" + (f" — {study.message}" if study.message else "")
    parts = [head, "", f"Status: {status} ({fmt(study.seconds, '.1f')} s)", ""]
    if study.outcome is not None and study.render is not None:
        try:
            parts.append(study.render(study, out_dir))
        except Exception as err:  # a renderer that raises makes the study an ERROR
            study.status = Status.ERROR
            study.message = f"render: {type(err).__name__}: {err}".splitlines()[0]
            study.traceback = traceback.format_exc()
            parts[2] = f"Status: **ERROR** — {study.message}"
    if study.outcome is not None:
        checks = study.outcome.checks
        if checks:
            parts += ["", "Checks: " + "; ".join(
                f"{c.name} {'✓' if c.passed else '✗'} ({c.detail})" for c in checks) + "."]
    return "\n".join(parts)


def render(results: Results, out_dir: str, *, title: str | None = None) -> str:
    """The Markdown text of the report; writes the plots into ``out_dir`` on the way."""
    env = results.environment
    df = _frame(results.rows)
    sections: list[str] = []
    by_family = {f.name: f for f in families()}
    names = list(dict.fromkeys([f.name for f in families()]
                               + [s.family for s in results.studies]
                               + list(df["family"])))  # a checked file's rows too
    for name in names:
        rows = df[df["family"] == name]
        studies = [s for s in results.studies if s.family == name]
        if rows.empty and not studies:
            continue
        family = by_family.get(name, Family(name=name, title=name, description=""))
        sections += [f"## {family.name} — {family.title}", "", family.description, ""]
        if not rows.empty:
            try:
                plot = _plot_family(rows, family, os.path.join(out_dir, f"{family.name}.png"))
                sections += [f"![{family.name}]({plot})", ""]
            except Exception as err:  # a plot is never worth a lost report
                sections += [f"(plot failed: {type(err).__name__}: {err})", ""]
            sections += [_family_table(rows), ""]
        sections += [_render_study(s, out_dir) + "\n" for s in studies]
    head = [f"# {title or 'backprop-suite report'} — {env.get('platform', '?')}", "",
            verdict(results), "", "## Environment", "", "```"]
    head += [f"{k:<15} {v}" for k, v in env.items() if k != "jax_environment"]
    head += ["```", "", "(JAX's own environment report is in results.json, "
             "`environment.jax_environment`.)", "", "## Summary", "",
             _summary_table(df, results.studies), "", "## Method", "", _method(), ""]
    return "\n".join(head + sections)


def study_row(study: StudyResult) -> dict[str, Any]:
    """A study as a results.csv row: its name as the case, its status and message."""
    row = dict.fromkeys(COLUMNS)
    row.update(case=f"{study.family}/study/{study.name}", family=study.family,
               status=str(study.status), message=study.message, sizes="study")
    return row


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Status):
        return str(x)
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_report(results: Results, out_dir: str | os.PathLike, *,
                 title: str | None = None) -> dict[str, str]:
    """Write report.md, results.csv, results.json and the plots under ``out_dir``.

    Returns:
      {"report.md": path, "results.csv": path, "results.json": path}.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    text = render(results, out_dir, title=title)  # renders studies: may turn one into ERROR
    paths = {name: os.path.join(out_dir, name)
             for name in ("report.md", "results.csv", "results.json")}
    frame = pd.DataFrame([r.as_dict() for r in results.rows]
                         + [study_row(s) for s in results.studies], columns=list(COLUMNS))
    atomic_write(paths["results.csv"],
                 lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
    document = dict(environment=dict(results.environment),
                    verdict=dict(passed=results.passed, text=verdict(results).replace("**", "")),
                    rows=[r.as_dict() for r in results.rows],
                    studies=[s.as_dict() for s in results.studies])
    atomic_write_text(paths["results.json"],
                      json.dumps(_jsonable(document), indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["report.md"], text)
    return paths
