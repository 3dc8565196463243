"""Run the course's benchmarks and print one table, every figure beside its peer.

    python benchmarks/run.py                      # everything (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick              # a smoke run: seconds, rough figures
    python benchmarks/run.py --only training      # one section (repeatable)
    python benchmarks/run.py --only training --device cuda
    python benchmarks/run.py --save last-run.md   # also write the table as Markdown

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

# torch's own choice (cores), read before any section pins it to 1 thread.
DEFAULT_THREADS = torch.get_num_threads()

SECTIONS = ("training", "grading", "selfchecks", "sandbox")


def run_section(name: str, args: argparse.Namespace) -> list:
    """The rows of one section; its module is imported only now, so that a missing extra
    (zuko, normflows, nbgrader) costs only its own section."""
    module = importlib.import_module(name)
    if name == "training":
        return module.run(args.quick, torch.device(args.device), DEFAULT_THREADS, args.seeds)
    return module.run(args.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training device")
    parser.add_argument(
        "--seeds", type=int, default=1, help="training seeds for the NLLs (median; default 1)"
    )
    parser.add_argument("--save", type=Path, help="also write the machine and table here (.md)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")

    from report import machine_lines, table_lines

    header = machine_lines(DEFAULT_THREADS, args.device)
    if args.quick:
        header.append("quick run: smoke-test sizes, not the figures to report")
    print("\n".join(header), flush=True)
    rows = []
    for name in args.only or SECTIONS:
        print(f"running {name} ...", flush=True)
        rows += run_section(name, args)
    lines = table_lines(rows)
    print("\n".join(lines))
    if args.save:
        args.save.write_text("\n".join([*(f"- {h}" for h in header), "", *lines, ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
