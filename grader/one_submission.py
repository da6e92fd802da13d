"""Grade one submission: its report as the reports folder keeps it, its feedback page, its wrong answers' digests.

What a local batch's threads (`grader.batch`) and a Dask worker (`grader.integrations.cluster`) both call: the same
function, so that a class graded either way has the same files. The report names the notebook as the grader found
it (`shown_as`), also where a worker grades a copy of it elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib

from grader import sandbox
from grader.assignment import Assignment
from grader.errors import NotANotebook
from grader.grade import feedback_edges, grade_with_runs
from grader.reports import text as reports
from grader.rubric import Rubric
from grader.runs import CallReturned, ValueKey
from grader.submissions import Submission
from grader.verdicts import PASSING, GradedRun, Report, ungradable


def failed_report(rubric: Rubric, notebook: str, reason: str) -> dict:
    """The report (as JSON) of a submission that could not be graded at all: 0 for every variable, and why."""
    return reports.to_dict(ungradable(rubric, notebook, reason))


def _digest(value: object) -> str:
    """A short digest of a tensor's dtype, shape and bytes: equal only for identical answers."""
    import torch  # (see the note at the top of grader.batch, which imports this module)

    if type(value) is not torch.Tensor:
        return ""
    t = value.detach().cpu().contiguous()
    header = f"{t.dtype}{tuple(t.shape)}".encode()
    data = header + t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else header
    return hashlib.sha256(data).hexdigest()[:16]


def answer_digests(rubric: Rubric, graded: Report, main: GradedRun) -> dict[str, str]:
    """`exercise/name` -> a digest of the answer the notebook's own run gave (`main`), for every variable of the
    `graded` report that is wrong in that run: what the class report compares between students (identical wrong
    values)."""
    exercises = {ex.id: ex for ex in rubric.exercises}
    out = {}
    for v in graded.variables:
        ex = exercises.get(v.exercise)
        if ex is None or v.status in PASSING or (v.runs and v.runs[0] in PASSING):
            continue  # (right in the notebook's own run, wrong only in a hidden one: the value here is a right one)
        key: ValueKey = (ex.id, v.name)
        if ex.function is not None and v.name in {x.name for x in ex.variables} and ex.function.calls:
            key = CallReturned(ex.id, ex.function.calls[0], v.name)  # the first recorded call of the answer's function
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
    shown_as: str | None = None,
) -> tuple[dict, str | None]:
    """Grade one submission as `assignment`: its report, and its HTML feedback page (None for a notebook that
    cannot be read, which gets a failed report). `edges`: `grade.feedback_edges(assignment)`; `hidden_runs`:
    the hidden re-runs' parameters (default: the rubric's); `shown_as`: the notebook's path as the report and the
    page name it (default: `submission.path`; a Dask worker grades a copy under a path of its own)."""
    from grader.reports import feedback  # (torch, jinja2: see the note at the top of grader.batch)

    rubric = assignment.rubric
    shown = shown_as or str(submission.path)
    try:
        graded, runs = grade_with_runs(
            submission.path, assignment=assignment, timeout=timeout, pool=pool, hidden_runs=hidden_runs
        )
    except NotANotebook as e:  # the student's file; anything else is the grader's problem and stops the batch
        return {
            "student": submission.student,
            "sha256": submission.digest,
            **failed_report(rubric, shown, str(e).replace(str(submission.path), shown)),
            "answers": {},
        }, None
    graded = dataclasses.replace(graded, notebook=shown)
    page = feedback.page(graded, runs, feedback_edges(assignment) if edges is None else edges)
    answers = answer_digests(rubric, graded, runs[0]) if runs else {}
    return {
        "student": submission.student,
        "sha256": submission.digest,
        **reports.to_dict(graded),
        "answers": answers,
    }, page
