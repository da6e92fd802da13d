"""Grade a whole class: grade the submissions found in parallel, keep every grade, rebuild the class's files.

find submissions (`grader.submissions`) -> grade each one (skipping those whose content already has
a report) -> write its report atomically the moment it is ready -> rebuild grades.csv, the feedback
files and the class summary from the reports on disk (`grader.reports.class_files`).

The reports on disk are the gradebook: a batch killed at any moment and started again grades only
what has no report yet, and ends with the same files as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from grader import assignment as assignments
from grader import notebook, sandbox
from grader.assignment import Assignment
from grader.errors import GraderError, NotANotebook
from grader.reports import text as reports
from grader.reports.class_files import (
    Summary,
    canvas_csv,
    feedback_markdown,
    gradebook_csv,
    summarize,
    summary_png,
    summary_text,
)
from grader.reports.files import write_atomically
from grader.rubric import Rubric
from grader.sandbox import common
from grader.submissions import Found, Submission
from grader.verdicts import PASSING, ungradable

# torch, and the modules that import it (grade's stages, compare, score, feedback, class_report), are imported
# where they are used: the pool's worker starts first, and its `import torch` overlaps the grader's own.


@dataclass(frozen=True)
class Outcome:
    """One submission's grade, as written to the reports folder."""

    submission: Submission
    """Which one."""
    report: dict
    """The `grader check --json` object, plus `student` and `sha256`."""
    reused: bool
    """True when an earlier run's report for the same content was kept."""
    why: str = ""
    """Why it was graded again, when an earlier report existed ("rubric changed"); empty otherwise."""


# --- grading and writing ------------------------------------------------------------------------------


def failed_report(rubric: Rubric, notebook: str, reason: str) -> dict:
    """The report (as JSON) of a submission that could not be graded at all: 0 for every variable, and why."""
    return reports.to_dict(ungradable(rubric, notebook, reason))


def _read_report(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _existing(path: Path, digest: str) -> dict | None:
    found = _read_report(path)
    return found if found is not None and found.get("sha256") == digest else None


# --- what grades a submission: a report is reused only while all of it is unchanged ---------------------

_CHANGED = {
    "submission": "submission",
    "rubric": "rubric",
    "released": "released notebook",
    "solution": "solution",
    "hidden_runs": "hidden runs",
    "data": "data",
    "timeout": "time limit",
    "memory": "memory limit",
    "grader": "grader",
    "torch": "PyTorch",
}
"""Each input of a grade, as the progress line names it when it changed."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def _grader_version() -> str:
    """The package's version and a digest of its code and templates (the feedback page is written with the
    report): an install from a git checkout keeps its version number from commit to commit, and a grade must
    follow the code that made it."""
    try:
        version = metadata.version("backprop-grader")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"{version}+{code_digest(Path(__file__).resolve().parent)}"


def code_digest(package: Path) -> str:
    """A short digest of the `*.py` files of `package` and of everything in its `templates/` folders."""
    files = {
        p
        for p in package.rglob("*")
        if p.is_file() and (p.suffix == ".py" or "templates" in p.relative_to(package).parts)
    }
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _torch_version() -> str:
    """PyTorch's version, from its package metadata: importing torch here would delay the pool's start."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def grading_inputs(
    assignment: Assignment,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
    timeout: float | None = None,
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
) -> dict[str, str]:
    """A digest of everything besides the submission that its grade depends on, one per input: the rubric (its
    values, not its comments), the released notebook, the solution where the rubric reads it, the hidden runs
    (`hidden_runs`, or the rubric's), the data files, the time limit (`timeout`, or the rubric's) and the memory
    cap (`limits.memory`) a run had, since a run that ran out of either may pass with more, the grader's
    version, and PyTorch's (another release can compute the references a few ulps apart)."""
    rubric = assignment.rubric
    return {
        **assignment.inputs,  # the rubric, the released notebook, the solution where it is read, the data
        "hidden_runs": assignments.value_digest(list(rubric.hidden_runs if hidden_runs is None else hidden_runs)),
        "timeout": f"{timeout or rubric.timeout:g}",  # seconds, as `grade_with_runs` reads it
        "memory": f"{limits.memory / 2**20:g}",  # MB
        "grader": _grader_version(),
        "torch": _torch_version(),
    }


def regrade_reason(report: dict | None, submission: Submission, inputs: dict[str, str]) -> str | None:
    """Why `submission` must be graded again despite the earlier `report` ("rubric changed"); None to keep the
    report, "" when there is none to keep."""
    if report is None:
        return ""
    if report.get("sha256") != submission.digest:
        return "submission changed"
    kept = report.get("inputs")
    if not isinstance(kept, dict):
        return "its report does not say what graded it"
    changed = [_CHANGED[k] for k in inputs if kept.get(k) != inputs[k]]
    if not changed:
        return None
    return f"{', '.join(changed[:-1])} and {changed[-1]} changed" if len(changed) > 1 else f"{changed[0]} changed"


def _digest(value: object) -> str:
    """A short digest of a tensor's dtype, shape and bytes: equal only for identical answers."""
    import torch

    if type(value) is not torch.Tensor:
        return ""
    t = value.detach().cpu().contiguous()
    header = f"{t.dtype}{tuple(t.shape)}".encode()
    return _sha256(header + t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else header)[:16]


def answer_digests(rubric: Rubric, graded, main) -> dict[str, str]:
    """`exercise/name` -> a digest of the answer the notebook's own run gave (`main`), for every variable of the
    `graded` report that is wrong in that run: what the class report compares between students (identical wrong
    values)."""
    exercises = {ex.id: ex for ex in rubric.exercises}
    out = {}
    for v in graded.variables:
        ex = exercises.get(v.exercise)
        if ex is None or v.status in PASSING or (v.runs and v.runs[0] in PASSING):
            continue  # (right in the notebook's own run, wrong only in a hidden one: the value here is a right one)
        key = (ex.id, v.name)
        if ex.function is not None and v.name in {x.name for x in ex.variables} and ex.function.calls:
            key = (ex.id, f"{ex.function.calls[0]}/{v.name}")  # the first recorded call of the answer's function
        digest = _digest(main.captured.values.get(key))
        if digest:
            out[f"{ex.id}/{v.name}"] = digest
    return out


def grade_one(
    submission: Submission,
    assignment: Assignment,
    timeout: float | None,
    pool: sandbox.Pool | None = None,
    edges: dict[str, tuple[str, ...]] | None = None,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
) -> tuple[dict, str | None]:
    """Grade one submission as `assignment`: its report, and its HTML feedback page (None for a notebook that
    cannot be read, which gets a failed report). `edges`: `grade.feedback_edges(assignment)`; `hidden_runs`:
    the hidden re-runs' parameters (default: the rubric's)."""
    from grader.grade import feedback_edges, grade_with_runs
    from grader.reports import feedback

    rubric = assignment.rubric
    try:
        graded, runs = grade_with_runs(
            submission.path, assignment=assignment, timeout=timeout, pool=pool, hidden_runs=hidden_runs
        )
    except NotANotebook as e:  # the student's file; anything else is the grader's problem and stops the batch
        return {
            "student": submission.student,
            "sha256": submission.digest,
            **failed_report(rubric, str(submission.path), str(e)),
            "answers": {},
        }, None
    page = feedback.page(graded, runs, feedback_edges(assignment) if edges is None else edges)
    answers = answer_digests(rubric, graded, runs[0]) if runs else {}
    return {
        "student": submission.student,
        "sha256": submission.digest,
        **reports.to_dict(graded),
        "answers": answers,
    }, page


def _at_once(jobs: int, workers: sandbox.Pool) -> int:
    """How many submissions to grade at once: `jobs`, or fewer where their runs would not fit the memory of
    the container the grader runs in (said on stderr)."""
    if workers.most_at_once is None or jobs <= workers.most_at_once:
        return jobs
    print(
        f"grader: warning: grading {workers.most_at_once} at once, not {jobs}: more runs would not fit the "
        f"memory limit the grader runs under with {common.MIN_RUN_MEMORY // 2**20} MB each",
        file=sys.stderr,
    )
    return workers.most_at_once


def grade_all(
    found: Found,
    assignment: str | Assignment,
    out: Path,
    *,
    jobs: int = 1,
    timeout: float | None = None,
    force: bool = False,
    progress: Callable[[Outcome], None] | None = None,
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
    scheduler: str | None = None,
    backend: sandbox.Backend | None = None,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
    pool: sandbox.Pool | None = None,
) -> list[Outcome]:
    """Grade every submission in `found` as `assignment` (its name, or the `Assignment` a caller loaded) into
    `out/reports/`, `jobs` at a time, reusing a report only while the submission and everything else that graded
    it (`grading_inputs`) are unchanged.

    `limits` caps each run (memory, file size, processes, its /tmp). `scheduler`: grade on a Dask cluster
    instead (`tcp://HOST:PORT`, or `local:N` for N local Dask workers; see `grader.integrations.cluster`); `jobs` is
    then the cluster's business. `backend`: the sandbox to run them in (default: `sandbox.choose()`).
    `hidden_runs`: the hidden re-runs' parameters (default: the rubric's). `pool`: warm workers to grade in
    (default: a pool of the batch's own, which hides the batch's folders from every run; a pool given here
    hides them only from workers it starts from now on).
    """
    from grader.grade import feedback_edges, hidden_folders

    if not isinstance(assignment, Assignment):
        assignment = assignments.load(assignment)
    inputs = grading_inputs(assignment, hidden_runs, timeout, limits)
    folder = out / "reports"
    for stale in folder.glob(".*.json.*"):  # a write that a killed batch left half done
        stale.unlink(missing_ok=True)
    outcomes: list[Outcome] = []
    todo: list[Submission] = []
    why: dict[str, str] = {}
    for s in found.submissions:
        earlier = _read_report(folder / f"{s.student}.json")
        reason = "--force" if force and earlier is not None else regrade_reason(earlier, s, inputs)
        if reason is None:
            outcomes.append(Outcome(s, earlier, reused=True))
            if progress:
                progress(outcomes[-1])
        else:
            todo.append(s)
            why[s.student] = reason
    if not todo:
        return sorted(outcomes, key=lambda o: o.submission.student)

    def record(s: Submission, report: dict, page: str | None) -> None:
        report = {**report, "inputs": inputs}
        if page is not None:  # before the report: a report on disk means its page is there too
            write_atomically(out / "feedback" / f"{s.student}.html", page)
        write_atomically(folder / f"{s.student}.json", json.dumps(report, indent=2))
        outcomes.append(Outcome(s, report, reused=False, why=why[s.student]))
        if progress:
            progress(outcomes[-1])

    # No run may read the solutions, the rubric, the other submissions or what this batch writes.
    hidden = [*hidden_folders(assignment), out.resolve(), *found.roots, *(s.path.resolve() for s in found.submissions)]
    if scheduler is not None:
        from grader.integrations import cluster

        # the folders only (every submission is in one of them): a task's size must not grow with the class
        folders = [*hidden_folders(assignment), out.resolve(), *found.roots]
        for s, report, page in cluster.grade(
            todo,
            assignment,
            scheduler,
            timeout=timeout,
            limits=limits,
            hidden=tuple(str(p) for p in folders),
            backend=backend.requested if backend else "auto",
            hidden_runs=hidden_runs,
        ):
            record(s, report, page)
        return sorted(outcomes, key=lambda o: o.submission.student)

    if pool is not None:
        pool.hide(hidden)
    with (
        (
            sandbox.Pool(hidden, limits, backend, jobs=max(1, jobs)) if pool is None else contextlib.nullcontext(pool)
        ) as workers,
        ThreadPoolExecutor(max_workers=_at_once(max(1, jobs), workers)) as threads,
    ):
        edges = feedback_edges(assignment)
        futures = {threads.submit(grade_one, s, assignment, timeout, workers, edges, hidden_runs): s for s in todo}
        for future in as_completed(futures):
            record(futures[future], *future.result())
    return sorted(outcomes, key=lambda o: o.submission.student)


# --- what the instructor reads ------------------------------------------------------------------------


def answer_cells(rubric: Rubric, path: Path) -> str:
    """The source of a submission's answer cells, one after another (for the class report's code similarity)."""
    answers = {ex.cell for ex in rubric.exercises}
    try:
        nb = notebook.read(path)
    except GraderError:
        return ""
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code" and notebook.grade_id(c) in answers)


def write_outputs(out: Path, assignment: str | Assignment, found: Found, canvas_column: str | None = None) -> Summary:
    """Rebuild grades.csv, the feedback files, the summary and the class report (class.json, class.html) from
    the reports of `found`'s students; and canvas.csv where submissions came from a Canvas download
    (`canvas_column`: the assignment's column there, default its name)."""
    from grader.reports import class_report

    if not isinstance(assignment, Assignment):
        assignment = assignments.load(assignment)
    rubric = assignment.rubric
    loaded = []
    for s in found.submissions:
        report = _existing(out / "reports" / f"{s.student}.json", s.digest)
        if report is not None:
            loaded.append(report)
            write_atomically(out / "feedback" / f"{s.student}.md", feedback_markdown(report))
    write_atomically(
        out / "grades.csv", gradebook_csv(rubric, loaded, (s.student for s in found.submissions if s.late))
    )
    if any(s.canvas_id for s in found.submissions):
        write_atomically(out / "canvas.csv", canvas_csv(found.submissions, loaded, canvas_column or assignment.name))
    summary = summarize(rubric, loaded)
    write_atomically(
        out / "summary.txt",
        summary_text(summary, found.problems) + "\nthe class, its mistakes and shared answers: class.html\n",
    )
    picture = summary_png(summary, out / "summary.png")
    paths = {s.student: s.path for s in found.submissions}
    built = class_report.build(rubric, loaded, lambda student: answer_cells(rubric, paths[student]))
    write_atomically(out / "class.json", class_report.to_json(built))
    pages = {r["student"] for r in loaded if (out / "feedback" / f"{r['student']}.html").is_file()}
    write_atomically(out / "class.html", class_report.to_html(built, picture, pages))
    return summary
