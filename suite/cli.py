"""The ``backprop-suite`` command: list, report, bench, check.

Every option is validated before anything runs: an unknown family, tier, dtype or device
is a usage error (exit 2) and nothing is written. ``report`` exits 1 when any row or
study is FAIL or ERROR, 0 when everything passes. This process — and only this one —
switches JAX to the suite's strict settings (suite.config.configure), except for
``check``: it runs a user's file with JAX's settings as they are (ordinary user code
broadcasts implicitly), and exits 1 on a FAIL or ERROR, 2 on a usage error.

``report`` also turns on JAX's persistent compilation cache for this process and its
workers (``--compile-cache DIR``, default outside the repository; ``--no-compile-cache``),
so a repeated report loads its executables instead of compiling them, and judges the rows
in ``--workers`` processes (default: one per core on a CPU) before it times them alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import jax

from suite import cases as registry
from suite import checkfile
from suite import studies as study_registry
from suite.bench import run_bench_results
from suite.check import CheckResult
from suite.config import configure, default_compile_cache, use_compile_cache
from suite.learn import cli as learn_cli
from suite.report import fmt, verdict, write_report
from suite.results import Row, StudyResult
from suite.run import PLATFORMS, resolve_device, run_all
from suite.version import __version__

__all__ = ["main"]



def _choices(known: Callable[[], Sequence[str]], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list whose every item is in ``known()``."""
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"expected one or more {what}s, got {text!r}")
        unknown = [s for s in items if s not in known()]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(known())}")
        return items
    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _device_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of devices, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of processes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cores() -> int:
    """The cores this process may use, at most 8 (each worker holds a JAX of its own)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, usable or 1))


def _family_names() -> list[str]:
    return [f.name for f in registry.families()]


FAMILIES = _choices(_family_names, "family")
TIERS = _choices(lambda: registry.TIERS, "tier")
DTYPES = _choices(lambda: registry.DTYPES, "dtype")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backprop-suite",
                                description="Hand-derived backprop, checked against JAX autodiff "
                                            "and finite differences.")
    p.add_argument("--version", action="version", version=f"backprop-suite {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list the registered cases and studies")
    ls.add_argument("--family", type=FAMILIES, default=None, help="comma-separated families")
    ls.add_argument("--tier", type=TIERS, default=None, help="comma-separated tiers (default: all)")

    rep = sub.add_parser("report", help="run cases and studies, write <out>/<device>/report.md "
                                        "(<out>/<device>-quick/ with --quick)")
    rep.add_argument("--device", default=None, choices=PLATFORMS,
                     help="platform to run on (default: JAX's default device); an absent "
                          "device is an error, never a silent CPU run")
    rep.add_argument("--dtype", type=DTYPES, default=registry.DTYPES)
    rep.add_argument("--out", default="reports",
                     help="output root (default: reports): the report goes to <out>/<device>/, "
                          "a quick one to <out>/<device>-quick/")
    rep.add_argument("--family", type=FAMILIES, default=None)
    rep.add_argument("--tier", type=TIERS, default=None,
                     help="tiers to include (default: test,slow,report; test with --quick)")
    rep.add_argument("--budget", type=_positive, default=0.3,
                     help="seconds of timing per case and side (default 0.3)")
    rep.add_argument("--quick", action="store_true",
                     help="the test tier, judged but not timed, and the studies at small size "
                          "(minutes, not hours)")
    rep.add_argument("--no-studies", action="store_true", help="rows only")
    rep.add_argument("--devices", type=_device_count, default=None,
                     help="devices the sharded cases may use; on a CPU this many host devices "
                          "are made (the family `sharded` needs 4); more than the machine's "
                          "accelerators is an error")
    rep.add_argument("--workers", type=_worker_count, default=None,
                     help="processes that judge the rows (then the run times are measured "
                          "in this process alone); default: the number of cores on a CPU (at "
                          "most 8), 1 on a GPU or TPU (one accelerator, one process)")
    cache = rep.add_mutually_exclusive_group()
    cache.add_argument("--compile-cache", metavar="DIR", default=None,
                       help="JAX's persistent compilation cache for this run (default: "
                            "$XDG_CACHE_HOME/backprop-suite/jax or ~/.cache/backprop-suite/jax)")
    cache.add_argument("--no-compile-cache", action="store_true",
                       help="compile everything afresh (compile times are then never loads)")

    ben = sub.add_parser("bench", help="time compiled manual code against compiled autodiff")
    ben.add_argument("--device", default=None, choices=PLATFORMS)
    ben.add_argument("--dtype", type=DTYPES, default=None)
    ben.add_argument("--family", type=FAMILIES, default=None)
    ben.add_argument("--budget", type=_positive, default=3.0,
                     help="seconds of timing per case (default 3)")
    ben.add_argument("--no-extras", action="store_true",
                     help="skip the extra measurements (machine floor, memory, largest P)")
    ben.add_argument("--out", default=None,
                     help="also write the table as report.md, results.csv and results.json "
                          "in this folder (the report writer's files)")

    chk = sub.add_parser("check", help="run the checks a Python file declares (check_vjp and "
                                       "friends, or suite.cases.Case objects)")
    chk.add_argument("file", help="a .py file")
    chk.add_argument("--out", default=None,
                     help="also write report.md, results.csv and results.json in this folder")
    learn_cli.add_commands(sub)  # learn, grade: the exercise notebooks (suite/learn/cli.py)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":  # the user's code, with JAX's settings as they are
        return _check(args)
    if args.command in learn_cli.COMMANDS:  # the learner's kernel keeps JAX's settings too
        return learn_cli.run(args)
    if getattr(args, "devices", None):
        _request_host_devices(args.devices)
    configure()
    try:
        if args.command == "report" and not args.no_compile_cache:
            use_compile_cache(args.compile_cache or default_compile_cache())
        if args.command == "list":
            return _list(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            results = run_bench_results(family=args.family, dtypes=args.dtype,
                                        device=resolve_device(args.device),
                                        budget_s=args.budget, extras=not args.no_extras)
            if args.out:
                paths = write_report(results, args.out, title="backprop-suite bench")
                print(f"wrote {', '.join(paths.values())}")
            return 0
    except ValueError as err:  # bad input found after parsing (an absent device, say)
        print(f"backprop-suite: error: {err}", file=sys.stderr)
        return 2
    return 2


def _request_host_devices(count: int) -> None:
    """Ask JAX for ``count`` CPU devices; only possible before its backends start.

    On a GPU or TPU machine this adds host devices only: the accelerators are what they
    are, and ``_check_devices`` compares their number with the request.
    """
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already runs (main() called inside a JAX program): checked later
        pass


def _check_devices(requested: int | None, device: jax.Device) -> int:
    """The number of ``device.platform`` devices; ValueError if fewer than ``requested``."""
    have = len(jax.devices(device.platform))
    if requested is not None and have < requested:
        hint = (" (JAX's CPU backend had already started, so --devices could not add host "
                "devices: run backprop-suite in a fresh process)" if device.platform == "cpu"
                else "")
        raise ValueError(f"--devices {requested}: this machine has {have} {device.platform} "
                         f"device(s){hint}")
    return have


def _needs_devices(selected: list, have: int) -> tuple[list, list]:
    """(runnable, left out): cases or studies that need more devices than ``have``."""
    return ([x for x in selected if x.devices <= have],
            [x for x in selected if x.devices > have])


def _list(args: argparse.Namespace) -> int:
    selected = registry.cases(family=args.family, tiers=args.tier)
    studies = study_registry.studies(family=args.family)
    try:
        for case in selected:
            print(f"{case.name:<44} {case.tier:<7} {','.join(case.dtypes):<16} {case.size_label}")
        for study in studies:
            print(f"{study.family + '/study/' + study.name:<44} study   {study.title}")
        print(f"{len(selected)} cases, {len(studies)} studies")
        sys.stdout.flush()
    except BrokenPipeError:  # `backprop-suite list | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


class _Progress:
    """A tqdm bar (count, rate, ETA) on a terminal; one plain line per result otherwise."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm  # only a terminal needs it
            self.bar = tqdm(total=total, unit="row", dynamic_ncols=True)

    def __call__(self, item: Row | StudyResult) -> None:
        if isinstance(item, Row):
            line = (f"{item.status!s:<5} {item.case:<44} {item.dtype:<8} "
                    f"normwise {fmt(item.normwise)}  {item.message}")
        else:
            line = f"{item.status!s:<5} study {item.name:<38} {item.seconds:6.1f} s  {item.message}"
        if self.bar is None:
            print(line, flush=True)
        else:
            if not item.status.passed:
                self.bar.write(line)
            label = item.case if isinstance(item, Row) else item.name
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def timed(self, row: Row) -> None:
        """A row judged earlier (by a worker) and now timed here."""
        if self.bar is None:
            print(f"{'timed':<5} {row.case:<44} {row.dtype:<8} ratio {fmt(row.ratio, '.2f')}  "
                  f"{row.message if not row.status.passed else ''}".rstrip(), flush=True)
        else:
            self.bar.set_postfix_str(f"timing {row.case}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    have = _check_devices(args.devices, device)
    tiers = args.tier or (("test",) if args.quick else ("test", "slow", "report"))
    selected, left_cases = _needs_devices(registry.cases(family=args.family, tiers=tiers), have)
    studies, left_studies = _needs_devices(
        [] if args.no_studies else study_registry.studies(family=args.family), have)
    left_out = ""
    if left_cases or left_studies:
        need = max(x.devices for x in left_cases + left_studies)
        left_out = (f"; left out {len(left_cases)} cases and {len(left_studies)} studies that "
                    f"need {need} {device.platform} devices, this process has {have} "
                    f"(backprop-suite report --devices {need})")
        if not selected and not studies:
            raise ValueError(f"nothing to run{left_out}")
        print(f"backprop-suite: {left_out[2:]}", file=sys.stderr)
    workers = args.workers or (_cores() if device.platform == "cpu" else 1)
    rows = sum(1 for c in selected for d in args.dtype if d in c.dtypes)
    timed_apart = rows if workers > 1 and not args.quick else 0
    start = time.perf_counter()
    progress = _Progress(rows + timed_apart + len(studies))
    try:
        results = run_all(selected, args.dtype, studies=studies, device=device,
                          quick=args.quick, timing=not args.quick, truth=True,
                          progress=progress, budget_s=args.budget, workers=workers,
                          on_timed=progress.timed)
    finally:
        progress.close()
    results.environment["selection"] = (
        f"{'quick (judged, not timed): ' if args.quick else ''}tiers {','.join(tiers)}; dtypes "
        f"{','.join(args.dtype)}; families {','.join(args.family) if args.family else 'all'}; "
        f"{len(studies)} studies{' at small size' if args.quick else ''}; "
        f"{have} {device.platform} device(s){left_out}")
    title = "backprop-suite quick report" if args.quick else "backprop-suite report"
    folder = device.platform + ("-quick" if args.quick else "")  # never the full report's
    paths = write_report(results, os.path.join(args.out, folder), title=title)
    print(verdict(results).replace("**", ""))
    print(f"wrote {', '.join(paths.values())} in {time.perf_counter() - start:.0f} s")
    return 0 if results.passed else 1


def _check(args: argparse.Namespace) -> int:
    def progress(row: Row, result: CheckResult | None) -> None:
        if result is not None and not row.status.passed:
            print(result, flush=True)
        else:
            print(f"{row.status!s:<5} {row.case} {row.dtype}  {row.message}".rstrip(), flush=True)

    try:
        results = checkfile.run_file(args.file, progress=progress)
    except ValueError as err:
        print(f"backprop-suite check: error: {err}", file=sys.stderr)
        return 2
    print(verdict(results).replace("**", ""))
    if args.out:
        paths = write_report(results, args.out,
                             title=f"backprop-suite check {os.path.basename(args.file)}")
        print(f"wrote {', '.join(paths.values())}")
    return 0 if results.passed else 1


if __name__ == "__main__":
    sys.exit(main())
