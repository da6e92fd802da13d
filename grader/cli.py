"""The `grader` command: parse arguments, make one library call, print."""

from __future__ import annotations

import argparse
import os
import sys

from grader.errors import GraderError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grader", description="Grade hand-written backprop homework.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="grade one notebook and print points per gradient variable")
    check.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file to grade")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    check.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit in seconds (default: the rubric's)")
    check.add_argument("--assignment", metavar="NAME", help="grade as this assignment (default: from the notebook's metadata)")
    check.add_argument("--hidden-runs", metavar="FILE",
                       help="a TOML file of [[hidden_run]] parameter tables to use instead of the published ones")
    gradebook = commands.add_parser(
        "gradebook", help="grade an nbgrader course's submitted/ folder and write the scores into its gradebook")
    gradebook.add_argument("course", metavar="COURSE", help="the nbgrader course directory")
    gradebook.add_argument("assignment", metavar="ASSIGNMENT", help="the assignment's name in that course")
    gradebook.add_argument("--db", metavar="URL", help="the gradebook's database URL (default: COURSE/gradebook.db)")
    gradebook.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit per run (default: the rubric's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 report, 1 ungradable input, 2 usage)."""
    args = _parser().parse_args(argv)
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        _parser().error("--timeout must be a positive number of seconds")
    from grader import grade, report, rubric  # after parsing: `--help` should not wait for torch

    if args.command == "gradebook":
        return _gradebook(args)
    try:
        hidden = rubric.load_hidden_runs(args.hidden_runs) if args.hidden_runs else None
        result = grade.grade_notebook(args.notebook, assignment=args.assignment, timeout=args.timeout, hidden_runs=hidden)
    except GraderError as e:
        print(f"grader: {e}", file=sys.stderr)
        return e.exit_code
    print(report.to_json(result) if args.json else report.to_text(result))
    return 0


def _gradebook(args: argparse.Namespace) -> int:
    from grader import gradebook

    def progress(done: gradebook.Recorded) -> None:
        r, s = done.report, done.submission
        outcome = f"{r.score:g}/{r.max_score:g}" + ("" if r.status == "graded" else f" ({r.error})") if r else done.error
        print(f"{s.student}  {s.notebook}  {outcome}", flush=True)

    try:
        done = gradebook.grade_course(args.course, args.assignment, db_url=args.db, timeout=args.timeout, progress=progress)
    except GraderError as e:
        print(f"grader: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{len(done)} submissions of {args.assignment} graded and written to the gradebook")
    return 0


def run() -> None:
    """The console script: `main()`, then exit without the interpreter's clean-up.

    Tearing down torch at exit takes about half a second and there is nothing left to clean up.
    """
    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `grader check ... | head`: the reader went away, nothing more to say
        code = 1
    os._exit(code)


if __name__ == "__main__":
    run()
