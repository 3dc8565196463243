"""The ``autograder`` command line: one subcommand per staff task, each a thin call into a module.

Heavy modules (torch, nbgrader) are imported inside the handlers so ``autograder --help`` and
``build --check`` stay fast. A user-fixable problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autograder.config import load_course
from autograder.errors import AutograderError


def _build(args: argparse.Namespace) -> int:
    from autograder.build import build_assignment

    assignment = load_course().assignment(args.assignment)
    drift = build_assignment(assignment, check=args.check)
    if args.check and drift:
        print(f"{assignment.release_dir} is out of date with {assignment.solution_dir}:")
        for path in drift:
            print(f"  {path}")
        print(f"run: autograder build {assignment.name}")
        return 1
    if args.check:
        print(f"{assignment.release_dir}: up to date")
    else:
        print(f"built {assignment.release_dir} ({len(drift)} file(s) changed)")
    return 0


def _release(args: argparse.Namespace) -> int:
    from autograder.release import release_student

    assignment = load_course().assignment(args.assignment)
    release_student(assignment, Path(args.out))
    print(f"student bundle written to {args.out}")
    return 0


def _release_solutions(args: argparse.Namespace) -> int:
    from autograder.release import release_solutions

    assignment = load_course().assignment(args.assignment)
    release_solutions(assignment, Path(args.out), force=args.force)
    print(f"solutions bundle written to {args.out}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from autograder.grading.batch import grade_batch

    course = load_course()
    assignment = course.assignment(args.assignment)
    grade_batch(
        course,
        assignment,
        [Path(s) for s in args.submissions],
        Path(args.out),
        jobs=args.jobs,
        db_url=args.db,
        parts=args.part or None,
        sandbox=args.sandbox,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from autograder.demo import run_demo

    return run_demo(load_course(), jobs=args.jobs)


def _mutants(args: argparse.Namespace) -> int:
    from autograder.mutants import run_command

    course = load_course()
    return run_command(
        course,
        course.assignment(args.assignment),
        parts=args.part or None,
        k=args.sample,
        seed=args.seed,
        jobs=args.jobs,
        min_kill_rate=args.min_kill_rate,
    )


def _gradescope(args: argparse.Namespace) -> int:
    from autograder.gradescope import write_gradescope_zip

    assignment = load_course().assignment(args.assignment)
    write_gradescope_zip(assignment, Path(args.out))
    print(f"Gradescope autograder written to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from autograder.gradebook import export_csv

    export_csv(load_course(), Path(args.out), db_url=args.db)
    print(f"gradebook exported to {args.out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autograder",
        description="Build, release and grade the course's assignments (run from the repo root).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="regenerate assignments/A from solutions/A")
    build.add_argument("assignment")
    build.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 when the release is stale"
    )
    build.set_defaults(handler=_build)

    release = commands.add_parser("release", help="write the student bundle")
    release.add_argument("assignment")
    release.add_argument("--out", required=True)
    release.set_defaults(handler=_release)

    grade = commands.add_parser("grade", help="grade submissions (folders or .zip files)")
    grade.add_argument("assignment")
    grade.add_argument("submissions", nargs="+", metavar="SUBMISSION")
    grade.add_argument("--out", required=True)
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    grade.add_argument("--db", default=None, help="gradebook SQLAlchemy URL (default: SQLite)")
    grade.add_argument(
        "--part", action="append", help="grade only this part (repeatable); for re-grades"
    )
    grade.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "user", "none"),
        default="auto",
        help="how student code is isolated (default: the best available; `none` flags every "
        "result no-sandbox)",
    )
    grade.set_defaults(handler=_grade)

    demo = commands.add_parser("demo", help="grade the example submissions and print the table")
    demo.add_argument("--jobs", type=int, default=2)
    demo.set_defaults(handler=_demo)

    mutants = commands.add_parser(
        "mutants", help="grade generated mutants of the solution; kill rate per part"
    )
    mutants.add_argument("assignment")
    mutants.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    mutants.add_argument("--part", action="append", help="only this part's mutants (repeatable)")
    mutants.add_argument("--sample", type=int, default=None, help="grade K mutants drawn at random")
    mutants.add_argument("--seed", type=int, default=0, help="seed of --sample's draw")
    mutants.add_argument(
        "--min-kill-rate", type=float, default=None, help="exit 1 when a part is below (0..1)"
    )
    mutants.set_defaults(handler=_mutants)

    gradescope = commands.add_parser("gradescope", help="write a Gradescope autograder zip")
    gradescope.add_argument("assignment")
    gradescope.add_argument("--out", required=True)
    gradescope.set_defaults(handler=_gradescope)

    solutions = commands.add_parser(
        "release-solutions", help="write the solutions bundle (after the due date)"
    )
    solutions.add_argument("assignment")
    solutions.add_argument("--out", required=True)
    solutions.add_argument("--force", action="store_true", help="release before the due date")
    solutions.set_defaults(handler=_release_solutions)

    export = commands.add_parser("export", help="write the gradebook to CSV (nbgrader's layout)")
    export.add_argument("--out", required=True)
    export.add_argument("--db", default=None, help="gradebook SQLAlchemy URL (default: SQLite)")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AutograderError as exc:
        print(f"autograder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "autograder: interrupted (graded submissions are kept; run again to resume)",
            file=sys.stderr,
        )
        return 130
