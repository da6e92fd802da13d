"""Grade a whole class: grade the submissions found in parallel, keep every grade, rebuild the class's files.

find submissions (`grader.submissions`) -> grade each one (skipping those whose content already has
a report) -> write its report atomically the moment it is ready -> rebuild grades.csv, the feedback
files and the class summary from the reports on disk (`grader.reports.class_files`).

The reports on disk are the gradebook: a batch killed at any moment and started again grades only
what has no report yet, and ends with the same files as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from grader import assignment as assignments
from grader import notebook, one_submission, regrade, sandbox
from grader.assignment import Assignment
from grader.errors import GraderError
from grader.grade import feedback_edges, hidden_folders, start_workers
from grader.reports import class_report
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
from grader.sandbox.limits import MIN_RUN_MEMORY
from grader.submissions import Found, Submission

# torch, and the modules that import it (grade's stages, compare, score, feedback), are imported where they are
# used: the pool's worker starts first, and its `import torch` overlaps the grader's own.


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


def _at_once(jobs: int, workers: sandbox.Pool) -> int:
    """How many submissions to grade at once: `jobs`, or fewer where their runs would not fit the memory of
    the container the grader runs in (said on stderr)."""
    if workers.most_at_once is None or jobs <= workers.most_at_once:
        return jobs
    print(
        f"grader: warning: grading {workers.most_at_once} at once, not {jobs}: more runs would not fit the "
        f"memory limit the grader runs under with {MIN_RUN_MEMORY // 2**20} MB each",
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
    it (`regrade.grading_inputs`) are unchanged.

    `limits` caps each run (memory, file size, processes, its /tmp). `scheduler`: grade on a Dask cluster
    instead (`tcp://HOST:PORT`, or `local:N` for N local Dask workers; see `grader.integrations.cluster`); `jobs` is
    then the cluster's business. `backend`: the sandbox to run them in (default: `sandbox.choose()`).
    `hidden_runs`: the hidden re-runs' parameters (default: the rubric's). `pool`: warm workers to grade in
    (default: a pool of the batch's own, which hides the batch's folders from every run; a pool given here
    hides them only from workers it starts from now on).
    """
    if not isinstance(assignment, Assignment):
        assignment = assignments.load(assignment)
    inputs = regrade.grading_inputs(assignment, hidden_runs, timeout, limits)
    folder = out / "reports"
    for stale in folder.glob(".*.json.*"):  # a write that a killed batch left half done
        stale.unlink(missing_ok=True)
    outcomes, todo, why = _kept(found, folder, inputs, force, progress)
    if not todo:
        return sorted(outcomes, key=lambda o: o.submission.student)
    record = _recorder(out, inputs, why, outcomes, progress)
    # No run may read the solutions, the rubric, the other submissions or what this batch writes.
    folders = [*hidden_folders(assignment), out.resolve(), *found.roots]
    if scheduler is not None:
        # the folders only (every submission is in one of them): a task's size must not grow with the class
        backend_name = backend.requested if backend else "auto"
        _on_cluster(todo, assignment, scheduler, folders, record, timeout, limits, backend_name, hidden_runs)
    else:
        hidden = [*folders, *(s.path.resolve() for s in found.submissions)]
        _in_pool(todo, assignment, hidden, record, jobs, timeout, limits, backend, hidden_runs, pool)
    return sorted(outcomes, key=lambda o: o.submission.student)


_Record = Callable[[Submission, dict, str | None], None]
"""What takes one graded submission's report and feedback page (None: none) as they come."""


def _kept(
    found: Found, folder: Path, inputs: dict, force: bool, progress: Callable[[Outcome], None] | None
) -> tuple[list[Outcome], list[Submission], dict[str, str]]:
    """The outcomes of the submissions whose earlier report in `folder` stands (each told to `progress`), the
    submissions to grade, and why each of those is graded again."""
    outcomes: list[Outcome] = []
    todo: list[Submission] = []
    why: dict[str, str] = {}
    for s in found.submissions:
        earlier = regrade.read_report(folder / f"{s.student}.json")
        reason = "--force" if force and earlier is not None else regrade.regrade_reason(earlier, s, inputs)
        if reason is None:
            assert earlier is not None  # (kept: there is a report to keep)
            outcomes.append(Outcome(s, earlier, reused=True))
            if progress:
                progress(outcomes[-1])
        else:
            todo.append(s)
            why[s.student] = reason
    return outcomes, todo, why


def _recorder(
    out: Path,
    inputs: dict,
    why: dict[str, str],
    outcomes: list[Outcome],
    progress: Callable[[Outcome], None] | None,
) -> _Record:
    """What writes each graded submission's page and report under `out` and adds its outcome to `outcomes`."""

    def record(s: Submission, report: dict, page: str | None) -> None:
        report = {**report, "inputs": inputs}
        if page is not None:  # before the report: a report on disk means its page is there too
            write_atomically(out / "feedback" / f"{s.student}.html", page)
        write_atomically(out / "reports" / f"{s.student}.json", json.dumps(report, indent=2))
        outcomes.append(Outcome(s, report, reused=False, why=why[s.student]))
        if progress:
            progress(outcomes[-1])

    return record


def _on_cluster(
    todo: list[Submission],
    assignment: Assignment,
    scheduler: str,
    hidden: list[Path],
    record: _Record,
    timeout: float | None,
    limits: sandbox.Limits,
    backend: str,
    hidden_runs: tuple[dict[str, object], ...] | None,
) -> None:
    """Grade `todo` on the Dask cluster at `scheduler`, `hidden` hidden from every run."""
    from grader.integrations import cluster  # (Dask, an optional extra: a local batch never imports this module)

    for s, report, page in cluster.grade(
        todo,
        assignment,
        scheduler,
        timeout=timeout,
        limits=limits,
        hidden=tuple(str(p) for p in hidden),
        backend=backend,
        hidden_runs=hidden_runs,
    ):
        record(s, report, page)


def _in_pool(
    todo: list[Submission],
    assignment: Assignment,
    hidden: list[Path],
    record: _Record,
    jobs: int,
    timeout: float | None,
    limits: sandbox.Limits,
    backend: sandbox.Backend | None,
    hidden_runs: tuple[dict[str, object], ...] | None,
    pool: sandbox.Pool | None,
) -> None:
    """Grade `todo` here, `jobs` at a time, in `pool` (default: a pool of the batch's own), `hidden` hidden from
    every run."""
    if pool is not None:
        pool.hide(hidden)
    with (
        (
            sandbox.Pool(hidden, limits, backend, jobs=max(1, jobs)) if pool is None else contextlib.nullcontext(pool)
        ) as workers,
        ThreadPoolExecutor(max_workers=_at_once(max(1, jobs), workers)) as threads,
    ):
        start_workers(workers, assignment, hidden_runs)  # before this process imports torch (just below)
        edges = feedback_edges(assignment)
        futures = {
            threads.submit(one_submission.grade_one, s, assignment, timeout, workers, edges, hidden_runs): s
            for s in todo
        }
        for future in as_completed(futures):
            record(futures[future], *future.result())


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
    if not isinstance(assignment, Assignment):
        assignment = assignments.load(assignment)
    rubric = assignment.rubric
    loaded = []
    for s in found.submissions:
        report = regrade.existing(out / "reports" / f"{s.student}.json", s.digest)
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
