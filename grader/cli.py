"""The `grader` command: parse arguments, make one library call, print."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from grader import course, sandbox
from grader.errors import GraderError, UsageError
from grader.sandbox.cgroups import memory_limit
from grader.sandbox.limits import default_jobs

# The modules that import nbformat or torch (the assignment's, grade's, batch's, the integrations', the
# authors' commands'), and those only one command needs (its reports), are imported inside the commands that
# need them: `grader --help` does not wait for them, and `grader check`'s workers start before this process
# imports torch, so that their import overlaps its own.

if TYPE_CHECKING:  # (annotations only: the modules they come from import nbformat or torch, as above)
    from tqdm import tqdm

    from grader.assignment import Assignment
    from grader.batch import Outcome
    from grader.sandbox import Backend, Limits


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grader", description="Grade hand-written backprop homework.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _check_command(commands)
    _grade_command(commands)
    _gradebook_command(commands)
    _classroom_command(commands)
    _gradescope_command(commands)
    _authoring(commands)
    return parser


def _check_command(commands: argparse._SubParsersAction) -> None:
    """grader check NOTEBOOK."""
    check = commands.add_parser("check", help="grade one notebook and print points per gradient variable")
    check.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file to grade")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    check.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit in seconds (default: the rubric's)")
    check.add_argument(
        "--assignment",
        metavar="NAME|DIR",
        help="grade as this assignment, a name or an assignment's folder (default: from the notebook's metadata)",
    )
    check.add_argument(
        "--html", metavar="FILE", help="also write the feedback page (pictures of what is wrong) to FILE"
    )
    check.add_argument(
        "--junit", metavar="FILE", help="also write the grades as JUnit XML (a testcase per variable) to FILE"
    )
    check.add_argument(
        "--memory", type=float, metavar="MB", help="memory cap per process of the notebook (default: 2048)"
    )
    check.add_argument(
        "--data",
        metavar="PATH",
        help="lecture notebooks: the names.txt their code reads (default: the grader's data/names.txt)",
    )
    check.add_argument(
        "--hidden-runs",
        metavar="FILE",
        help="a TOML file of [[hidden_run]] parameter tables to use instead of the published ones",
    )
    _sandbox_option(check)
    _course_option(check)


def _grade_command(commands: argparse._SubParsersAction) -> None:
    """grader grade SUBMISSION... --assignment --out."""
    grade = commands.add_parser("grade", help="grade a whole class into a folder of reports, grades.csv and a summary")
    grade.add_argument(
        "submissions",
        metavar="SUBMISSION",
        nargs="+",
        help="notebooks, folders of them (nbgrader's submitted/ too) or zips of an LMS download",
    )
    grade.add_argument(
        "--assignment", metavar="NAME|DIR", required=True, help="the assignment to grade them as (a name or a folder)"
    )
    grade.add_argument("--out", metavar="DIR", required=True, help="where the reports and the gradebook go")
    _jobs_option(grade, "submissions")
    grade.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit per run (default: the rubric's)")
    grade.add_argument(
        "--memory", type=float, metavar="MB", help="memory cap per process of a notebook (default: 2048)"
    )
    grade.add_argument(
        "--force",
        action="store_true",
        help="grade again even where a report exists that the same submission, rubric, hidden runs, "
        "data, released notebook, time limit, memory cap, grader and PyTorch made",
    )
    grade.add_argument(
        "--hidden-runs",
        metavar="FILE",
        help="a TOML file of [[hidden_run]] parameter tables to use instead of the published ones",
    )
    grade.add_argument(
        "--canvas-assignment",
        metavar="COLUMN",
        help="the assignment's column in canvas.csv, as Canvas's gradebook export heads it: "
        "'Name (assignment id)' (default: the assignment's name)",
    )
    grade.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="grade on a Dask cluster: tcp://HOST:PORT of a running scheduler, or local:N for N local "
        "Dask workers (needs the dask extra)",
    )
    _sandbox_option(grade)
    _course_option(grade)


def _gradebook_command(commands: argparse._SubParsersAction) -> None:
    """grader gradebook COURSE ASSIGNMENT."""
    gradebook = commands.add_parser(
        "gradebook", help="grade an nbgrader course's submitted/ folder and write the scores into its gradebook"
    )
    gradebook.add_argument(
        "course", metavar="COURSE", help="the nbgrader course directory (also where its assignments are looked up)"
    )
    gradebook.add_argument("assignment", metavar="ASSIGNMENT", help="the assignment's name in that course")
    gradebook.add_argument("--db", metavar="URL", help="the gradebook's database URL (default: COURSE/gradebook.db)")
    gradebook.add_argument(
        "--timeout", type=float, metavar="S", help="wall-clock limit per run (default: the rubric's)"
    )


def _classroom_command(commands: argparse._SubParsersAction) -> None:
    """grader classroom ASSIGNMENT."""
    classroom = commands.add_parser("classroom", help="write a GitHub Classroom student repository's autograding files")
    classroom.add_argument("assignment", metavar="ASSIGNMENT", help="the assignment, e.g. backprop_ninja")
    _course_option(classroom)
    classroom.add_argument("--out", metavar="DIR", default=".", help="the student repository (default: here)")
    classroom.add_argument(
        "--package",
        metavar="SPEC",
        default="backprop-grader",
        help="what the autograder pip-installs for the grader (default: backprop-grader), "
        "e.g. 'backprop-grader @ git+https://github.com/you/grader'",
    )


def _gradescope_command(commands: argparse._SubParsersAction) -> None:
    """grader gradescope build ASSIGNMENT, and grader gradescope run SUBMISSION RESULTS."""
    gradescope = commands.add_parser("gradescope", help="build a Gradescope autograder, or run it on a submission")
    steps = gradescope.add_subparsers(dest="step", required=True, metavar="STEP")
    build = steps.add_parser("build", help="write an autograder zip to upload to Gradescope")
    build.add_argument("assignment", metavar="ASSIGNMENT", help="the assignment to grade, e.g. backprop_ninja")
    _course_option(build)
    build.add_argument(
        "--out", metavar="ZIP", default="autograder.zip", help="where to write it (default: autograder.zip)"
    )
    build.add_argument(
        "--torch-index-url", metavar="URL", help="where setup.sh gets PyTorch (default: PyTorch's CPU builds)"
    )
    run_step = steps.add_parser(
        "run", help="grade a submission folder and write results.json (what run_autograder does)"
    )
    run_step.add_argument("submission", metavar="SUBMISSION", help="the folder holding the submitted notebook")
    run_step.add_argument("results", metavar="RESULTS", help="the results.json to write")
    run_step.add_argument("--assignment", metavar="NAME|DIR", required=True, help="the assignment to grade it as")
    _course_option(run_step)
    run_step.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit per run (default: the rubric's)")
    for step in (build, run_step):
        step.add_argument(
            "--hidden-visibility",
            default="after_published",
            metavar="WHEN",
            choices=["hidden", "after_due_date", "after_published", "visible"],
            help="when students see the hidden re-runs' details (default: after_published)",
        )


def _authoring(commands: argparse._SubParsersAction) -> None:
    """The author's commands: new, release, validate."""
    new = commands.add_parser(
        "new", help="start an assignment of your own: a solution notebook and rubric that validate"
    )
    new.add_argument("name", metavar="NAME", help="the assignment's name (letters, digits, _ and -)")
    _course_option(new)
    release = commands.add_parser(
        "release",
        help="make the student notebook from the solution (nbgrader generate_assignment, and the grader's copy)",
    )
    release.add_argument("name", metavar="NAME", help="the assignment (or its folder)")
    _course_option(release)
    validate = commands.add_parser(
        "validate",
        help="check an assignment: its rubric, full marks for the solution, zero for the release, tolerances, "
        "and whether typical mistakes are caught and hinted",
    )
    validate.add_argument("name", metavar="NAME", help="the assignment (or its folder)")
    validate.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    validate.add_argument(
        "--strict", action="store_true", help="exit 1 also when a mistake is not caught, or caught without a hint"
    )
    validate.add_argument(
        "--seeds", type=int, default=20, metavar="N", help="seeds to measure autograd's noise over (default: 20)"
    )
    validate.add_argument("--no-mistakes", action="store_true", help="skip grading the derived and written mistakes")
    _jobs_option(validate, "mistakes")
    _sandbox_option(validate)
    _course_option(validate)


def _course_option(command: argparse.ArgumentParser, required: bool = False) -> None:
    command.add_argument(
        "--course",
        metavar="DIR",
        required=required,
        help="the course folder (nbgrader's layout: source/NAME/NAME.ipynb and rubric.toml) where assignment names "
        "are looked up first (default: $GRADER_COURSE)",
    )


def _jobs_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--jobs",
        type=int,
        default=_default_jobs(),
        metavar="N",
        help=f"{what} graded at once (default: the number of cores plus two; plus one under a container's memory "
        "limit)",
    )


@functools.cache
def _default_jobs() -> int:
    """`limits.default_jobs` here (the container's memory limit read once, whichever commands are built)."""
    return default_jobs(memory_limit())


def _sandbox_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--sandbox",
        choices=sandbox.CHOICES,
        help="how notebooks are isolated: linux (namespaces, as root or an ordinary user), portable "
        "(any platform: timeout, memory cap, process tree), auto (default, or $GRADER_SANDBOX: "
        "the best that works here)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 report, 1 ungradable input, 2 usage)."""
    args = _parser().parse_args(argv)
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not 0 < timeout < float("inf"):
        _parser().error("--timeout must be a positive number of seconds")
    backend = None
    if args.command in ("check", "grade", "gradebook", "validate"):
        try:
            backend = sandbox.choose(getattr(args, "sandbox", None))
        except GraderError as e:
            return _fail(e)
        if backend.warning:
            print(f"grader: warning: {backend.warning}", file=sys.stderr)

    memory = getattr(args, "memory", None)
    if memory is not None and not 64 <= memory < float("inf"):
        _parser().error("--memory must be at least 64 (MB)")
    if args.command in ("new", "release", "validate"):
        return _author(args, backend)
    if args.command == "grade":
        return _grade(args, backend)
    if args.command == "gradebook":
        return _gradebook(args)
    if args.command == "gradescope":
        return _gradescope(args)
    if args.command == "classroom":
        return _classroom(args)
    return _check(args, backend)


def _check(args: argparse.Namespace, backend: Backend | None) -> int:
    """grader check: the notebook's report printed, its JUnit XML and feedback page written where asked for."""
    # One notebook: the collector stays off meanwhile. Its first full pass over torch's objects (about 0.1 s) fell
    # on the way to the report; what one notebook's grading leaves in cycles is collected after (or goes with the
    # process, which the console script ends at once).
    gc.disable()
    try:
        with sandbox.Pool(limits=_limits(args), backend=backend) as pool:
            pool.start_ahead()  # its `import torch` overlaps everything up to the notebook's first run
            return _check_in(args, pool)
    finally:
        gc.enable()


def _check_in(args: argparse.Namespace, pool: sandbox.Pool) -> int:
    """grader check in `pool`, whose worker may have started already (the assignment's modules import after)."""
    # (nbformat, and one command's report: see the note at the top; imported once the worker has started)
    from grader import assignment, grade
    from grader.reports import text as report

    try:
        graded = _assignment(args.assignment, args.course) if args.assignment else None
        course_folder = _course(args.course)
        hidden = assignment.load_hidden_runs(args.hidden_runs) if args.hidden_runs else None
        result, runs = grade.grade_with_runs(
            args.notebook,
            assignment=graded,
            timeout=args.timeout,
            hidden_runs=hidden,
            pool=pool,
            data=args.data,
            course=course_folder,
            embedded=True,
        )
        if args.junit:
            from grader.reports import junit  # (only --junit writes XML)

            Path(args.junit).write_text(junit.to_junit(result), encoding="utf-8")
        if args.html:
            from grader import notebook  # (nbformat: see the note at the top)
            from grader.reports import feedback  # (torch and jinja2: only a page needs them)

            nb = notebook.read(Path(args.notebook))
            graded = grade.for_notebook(nb, Path(args.notebook), graded, course_folder, True)
            Path(args.html).write_text(feedback.page(result, runs, grade.feedback_edges(graded)), encoding="utf-8")
    except GraderError as e:
        if args.junit:  # CI reads a failure, not a missing file
            from grader.reports import junit  # (only --junit writes XML)

            Path(args.junit).write_text(junit.ungradable(args.notebook, str(e)), encoding="utf-8")
        return _fail(e)
    print(report.to_json(result) if args.json else report.to_text(result))
    return 0


def _classroom(args: argparse.Namespace) -> int:
    """grader classroom: the autograding files written into a student repository."""
    from grader.integrations import classroom  # (nbformat: see the note at the top)

    try:
        written = classroom.write(_one_of_ours(args.assignment, args.course), Path(args.out), args.package)
    except GraderError as e:
        return _fail(e)
    print("\n".join(str(p) for p in written))
    return 0


def _course(given: str | None) -> Path | None:
    """The course folder from --course or $GRADER_COURSE (None: neither), checked."""
    return course.course_dir(given)


def _assignment(given: str, course_given: str | None) -> str | Assignment:
    """The assignment --assignment (or ASSIGNMENT) names: a name looked up in the course then among the shipped
    ones, or an assignment's folder; `lecture` stays a name (lecture notebooks are recognised, not loaded)."""
    from grader import assignment  # (nbformat: see the note at the top)

    if given == assignment.LECTURE:
        return given
    location = course.resolve(given, course_given)
    assert location is not None  # (given is not None)
    return assignment.load_at(location)


def _one_of_ours(given: str, course_given: str | None) -> Assignment:
    """`_assignment` for the commands that grade a class or package an assignment: not the lecture's notebook,
    which has no release to hand out and is graded one notebook at a time (`grader check`)."""
    found = _assignment(given, course_given)
    if isinstance(found, str):
        raise UsageError(
            f"--assignment {given}: lecture notebooks are checked one at a time with grader check; this command "
            "needs one of the assignments (a shipped one, or one of your course's)"
        )
    return found


def _fail(error: GraderError) -> int:
    """Print `error` as the one line on stderr the exit code promises; its exit code."""
    print(f"grader: {str(error).translate(_ONE_LINE)}", file=sys.stderr)
    return error.exit_code


# A file name or a value quoted from the input may hold line breaks and other control characters: shown as
# escapes, they stay on the line and do nothing to the terminal.
_ONE_LINE = {**{c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}, 0x0A: "\\n", 0x0D: "\\r"}


def _limits(args: argparse.Namespace) -> Limits:
    """The sandbox's limits, with --memory if given."""
    if getattr(args, "memory", None) is None:
        return sandbox.DEFAULT_LIMITS
    return dataclasses.replace(sandbox.DEFAULT_LIMITS, memory=int(args.memory * 2**20))


class _Progress:
    """tqdm's bar (rate, ETA, the last submission) on a terminal; one plain line per submission otherwise,
    for logs and CI. `finish()` then says why submissions were graded again, one line per reason with its
    count (the bar has room for a few words of one)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.again: dict[str, int] = {}
        self.bar: tqdm | None = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # (a batch's bar only: `grader check` starts its worker before this would load)

            self.bar = tqdm(total=total, file=sys.stderr, unit="notebook", dynamic_ncols=True)

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        r = outcome.report
        if outcome.why:
            self.again[outcome.why] = self.again.get(outcome.why, 0) + 1
        what = f"{outcome.submission.student}: {r['score']:g}/{r['max_score']:g}" + (
            " (kept)" if outcome.reused else f" (graded again: {outcome.why})" if outcome.why else ""
        )
        if self.bar is None:
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)
            return
        self.bar.set_postfix_str(what[:40], refresh=False)
        self.bar.update()
        if self.done == self.total:
            self.bar.close()

    def finish(self) -> None:
        """Close the bar, and print each reason for grading again with how many it applied to, most first."""
        if self.bar is not None:
            self.bar.close()
        for why, count in sorted(self.again.items(), key=lambda x: (-x[1], x[0])):
            print(f"graded again: {why} ({count})", file=sys.stderr, flush=True)


def _author(args: argparse.Namespace, backend: Backend | None) -> int:
    """grader new, release and validate."""
    try:
        if args.command == "new":
            from grader import skeleton  # (nbformat: see the note at the top)

            written = skeleton.write(course.check_name(args.name), course.course_dir_for_new(args.course))
            print("\n".join(str(p) for p in written))
            return 0
        location = course.resolve(args.name, args.course)
        assert location is not None  # (a name is given)
        if args.command == "release":
            from grader import release  # (nbformat: see the note at the top)

            print(release.release(location))
            return 0
        from grader import validate  # (nbformat: see the note at the top)

        if args.seeds < 1 or args.jobs < 1:
            _parser().error("--seeds and --jobs must be at least 1")
        result = validate.validate(
            location, seeds=args.seeds, with_mistakes=not args.no_mistakes, jobs=args.jobs, backend=backend
        )
    except GraderError as e:
        return _fail(e)
    from grader.reports import validation  # (nbformat: see the note at the top)

    print(validation.to_json(result) if args.json else validation.to_text(result))
    return result.exit_code(args.strict)


def _grade(args: argparse.Namespace, backend: Backend | None) -> int:
    """grader grade: a class graded into --out, and what was written said."""
    # (nbformat, and one command's modules: see the note at the top)
    from grader import assignment, batch, submissions
    from grader.reports import class_files

    if args.jobs < 1:
        _parser().error("--jobs must be at least 1")
    out = Path(args.out)
    try:
        graded = _one_of_ours(args.assignment, args.course)  # once for the whole class (an unknown name fails here)
        hidden = assignment.load_hidden_runs(args.hidden_runs) if args.hidden_runs else None
        if not any(
            Path(s).exists() for s in args.submissions
        ):  # a mistyped path (as check's: exit 1), not an empty class
            raise GraderError(f"{', '.join(args.submissions)}: no such file or folder")
        with tempfile.TemporaryDirectory(prefix="grader-batch-") as scratch:
            found = submissions.discover([Path(s) for s in args.submissions], graded.name, Path(scratch))
            for problem in found.problems:
                print(f"note: {problem}", file=sys.stderr)
            progress = _Progress(len(found.submissions))
            batch.grade_all(
                found,
                graded,
                out,
                jobs=args.jobs,
                timeout=args.timeout,
                force=args.force,
                progress=progress,
                limits=_limits(args),
                scheduler=args.scheduler,
                backend=backend,
                hidden_runs=hidden,
            )
            progress.finish()
            summary = batch.write_outputs(out, graded, found, args.canvas_assignment)
    except GraderError as e:
        return _fail(e)
    if args.canvas_assignment is None and any(s.canvas_id for s in found.submissions):
        print(
            f"note: canvas.csv's score column is named {graded.name!r}, and Canvas's import matches it to an "
            "assignment by name (or creates one); --canvas-assignment 'Name (assignment id)' sends the scores to "
            "the assignment you mean (docs/instructors.md: Back to Canvas)",
            file=sys.stderr,
        )
    print(class_files.summary_text(summary, found.problems))
    canvas = f"; Canvas: {out / 'canvas.csv'}" if any(s.canvas_id for s in found.submissions) else ""
    print(
        f"grades: {out / 'grades.csv'}; reports: {out / 'reports'}; feedback: {out / 'feedback'}; "
        f"summary: {out / 'summary.png'}; the class (mistakes, shared answers): {out / 'class.html'}{canvas}"
    )
    return 0


def _gradebook(args: argparse.Namespace) -> int:
    """grader gradebook: an nbgrader course's submissions graded into its gradebook."""
    from grader.integrations import gradebook  # (nbformat: see the note at the top)

    def progress(done: gradebook.Recorded) -> None:
        r, s = done.report, done.submission
        outcome = (
            f"{r.score:g}/{r.max_score:g}" + ("" if r.status == "graded" else f" ({r.error})") if r else done.error
        )
        print(f"{s.student}  {s.notebook}  {outcome}", flush=True)

    try:
        done = gradebook.grade_course(
            args.course, args.assignment, db_url=args.db, timeout=args.timeout, progress=progress
        )
    except GraderError as e:
        return _fail(e)
    print(f"{len(done)} submissions of {args.assignment} graded and written to the gradebook")
    return 0


def _gradescope(args: argparse.Namespace) -> int:
    """grader gradescope build and run."""
    from grader.integrations import gradescope  # (nbformat: see the note at the top)

    try:
        if args.step == "build":
            index = gradescope.TORCH_CPU_INDEX if args.torch_index_url is None else args.torch_index_url
            graded = _one_of_ours(args.assignment, args.course)
            print(gradescope.build(graded, Path(args.out), args.hidden_visibility, index))
            return 0
        out = gradescope.run(
            Path(args.submission),
            Path(args.results),
            _one_of_ours(args.assignment, args.course),
            args.hidden_visibility,
            args.timeout,
        )
    except GraderError as e:
        return _fail(e)
    print(f"{out['score']:g} points; results written to {args.results}")
    return 0


def run() -> None:
    """The console script: `main()`, then exit without the interpreter's clean-up.

    Tearing down torch at exit takes about half a second and there is nothing left to clean up.
    """
    # jsonschema (under nbformat) imports rfc3987_syntax where it is installed, only to check "iri" formats,
    # which the notebook schema does not use; building that package's grammar takes most of a second.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None: "not importable"
    # torch in this process, once imported, computes on one thread unless told otherwise: its references and
    # comparisons are of small tensors, while the runs use the cores. Two threads spun against a run on a 2-core
    # machine and made a check's hidden runs' references 7 times slower (0.16 s instead of 0.023 s). (Inherited
    # by `--scheduler local:N`'s Dask workers, whose nanny sets the same by default.)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGTERM (a scheduler's `kill`, a CI timeout) unwinds like Ctrl-C: the runs going on end and their
    # cgroups are removed on the way out, instead of left behind as by SIGKILL
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `grader check ... | head`: the reader went away, nothing more to say
        code = 1
    except KeyboardInterrupt:
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    if sys.platform == "linux":  # runs still going (interrupted, or abandoned on an error) end with their cgroups
        from grader.sandbox.cgroups import remove_live  # (Linux only, and only now)

        remove_live()
    os._exit(code)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    run()
