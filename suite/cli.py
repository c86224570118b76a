"""The ``backprop-suite`` command: list, report, bench."""

import argparse
import os
import sys
import time


def _csv(text):
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _parser():
    p = argparse.ArgumentParser(prog="backprop-suite",
                                description="Hand-derived backprop, checked against JAX autodiff.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list the registered cases")
    ls.add_argument("--family", type=_csv, default=None, help="comma-separated families")
    ls.add_argument("--tier", type=_csv, default=None, help="comma-separated tiers (default: all)")

    rep = sub.add_parser("report", help="run the registry and write <out>/<device>/report.md")
    rep.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
    rep.add_argument("--dtype", type=_csv, default=("float32", "float64"))
    rep.add_argument("--out", default="reports")
    rep.add_argument("--family", type=_csv, default=None)
    rep.add_argument("--tier", type=_csv, default=("test", "slow", "report"),
                     help="tiers to include (default: test,slow,report)")
    rep.add_argument("--budget", type=float, default=0.3,
                     help="seconds of timing per case and side (default 0.3)")

    ben = sub.add_parser("bench", help="time compiled manual code against compiled autodiff")
    ben.add_argument("--device", default=None, choices=("cpu", "gpu", "tpu"))
    ben.add_argument("--dtype", type=_csv, default=None)
    ben.add_argument("--family", type=_csv, default=None)
    ben.add_argument("--budget", type=float, default=3.0,
                     help="seconds of timing per case (default 3)")
    ben.add_argument("--no-extras", action="store_true", help="skip family-specific studies")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    import suite
    suite.configure()
    from suite import cases as registry

    try:
        if args.command == "list":
            selected = registry.cases(family=args.family, tiers=args.tier)
            for case in selected:
                print(f"{case.name:<40} {case.tier:<7} {','.join(case.dtypes):<16} {case.size_label}")
            print(f"{len(selected)} cases")
            return 0
        if args.command == "report":
            return _report(args, registry)
        if args.command == "bench":
            from suite.bench import run_bench
            run_bench(family=args.family, dtypes=args.dtype, device=args.device,
                      budget_s=args.budget, extras=not args.no_extras)
            return 0
    except ValueError as err:
        print(f"backprop-suite: error: {err}", file=sys.stderr)
        return 2
    return 2


def _report(args, registry):
    from suite import report, run
    device = run.resolve_device(args.device)
    selected = registry.cases(family=args.family, tiers=args.tier)
    start = time.perf_counter()

    def progress(row):
        print(f"{row['status']:<5} {row['case']:<40} {row['dtype']:<8} "
              f"normwise {report._fmt(row['normwise'])}  {row['message'] or ''}", flush=True)

    df = run.run_all(selected, args.dtype, device=device, progress=progress, budget_s=args.budget)
    md, csv = report.write_report(df, os.path.join(args.out, args.device), device)
    print(report.verdict(df).replace("**", ""))
    print(f"wrote {md} and {csv} in {time.perf_counter() - start:.0f} s")
    return 0 if (df["status"] == "PASS").all() else 1


if __name__ == "__main__":
    sys.exit(main())
