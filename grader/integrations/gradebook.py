"""Grade an nbgrader course's submissions with this grader and write the scores into its gradebook.

`nbgrader autograde` runs the test cells inside the student's own kernel, where a patched
`torch.allclose` passes every check. This grades each `submitted/<student>/<assignment>/<notebook>.ipynb`
with `grade_notebook` instead (a separate process, references computed here) and stores, through
nbgrader's own `Gradebook` API, each exercise's points as the auto score of its test cell and the
report's messages as the auto comment of its answer cell, so formgrader shows them. As with
`nbgrader autograde`, a score a grader entered by hand is kept and the cell is flagged for review.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grader import assignment as assignments
from grader import notebook as notebooks
from grader import rubric as rubrics
from grader import sandbox
from grader.assignment import Assignment
from grader.errors import GraderError, NotANotebook
from grader.grade import grade_notebook, hidden_folders
from grader.verdicts import Report

if TYPE_CHECKING:
    from datetime import datetime

    from nbgrader.api import Gradebook


@dataclass(frozen=True)
class Submission:
    """One submitted notebook in an nbgrader course."""

    student: str
    """The student's id (their folder in `submitted/`)."""
    notebook: str
    """The notebook's name in the assignment (the file name without `.ipynb`)."""
    path: Path
    """Where it is."""


@dataclass(frozen=True)
class Recorded:
    """What was written to the gradebook for one submission."""

    submission: Submission
    """Which one."""
    report: Report | None
    """Its report, or None when it could not be graded at all."""
    error: str
    """Why it could not be graded (then every test cell got 0), or empty."""


def submissions(course: Path, assignment: str) -> Iterator[Submission]:
    """The notebooks in `course/submitted/*/<assignment>/`, by student and name."""
    for folder in sorted((course / "submitted").glob(f"*/{assignment}")):
        for path in sorted(folder.glob("*.ipynb")):
            yield Submission(student=folder.parent.name, notebook=path.stem, path=path)


def _comment(report: Report, exercise: str) -> str | None:
    """The auto comment of an answer cell: what is wrong with each variable that lost points (None: nothing)."""
    lines = [v.message for v in report.variables if v.exercise == exercise and v.points < v.max_points]
    if report.status == "failed":
        lines.insert(0, f"The notebook did not run to the end: {report.error}")
    return "\n".join(lines) or None


def _timestamp(submission: Submission) -> datetime | None:
    """The submission time nbgrader's collect recorded in timestamp.txt, if any (for late penalties)."""
    from nbgrader.utils import parse_utc  # (nbgrader: an optional extra, the `nbgrader` one)

    try:
        return parse_utc((submission.path.parent / "timestamp.txt").read_text().strip())
    except (OSError, ValueError, TypeError):
        return None


def record(
    gradebook: Gradebook,
    assignment: str,
    submission: Submission,
    report: Report | None,
    rubric: rubrics.Rubric,
    error: str = "",
) -> None:
    """Write one graded submission into an open nbgrader `Gradebook` (no report: 0 points, and `error` says why)."""
    from nbgrader.api import MissingEntry  # (nbgrader: an optional extra; importable, its gradebook is open)

    gradebook.update_or_create_student(submission.student)
    timestamp = _timestamp(submission)
    gradebook.update_or_create_submission(
        assignment, submission.student, **({"timestamp": timestamp} if timestamp else {})
    )
    scores = {e.id: e.score for e in report.exercises} if report else {}
    for ex in rubric.exercises:
        if ex.test_cell is None:
            continue
        grade = gradebook.find_grade(ex.test_cell, submission.notebook, assignment, submission.student)
        # the course may have changed the cell's points: scale, as its own partial credit would never exceed them
        grade.auto_score = float(scores.get(ex.id, 0.0)) * grade.max_score / ex.max_score if ex.max_score else 0.0
        grade.needs_manual_grade = grade.manual_score is not None  # a hand-entered score: have it reviewed
        try:
            comment = gradebook.find_comment(ex.cell, submission.notebook, assignment, submission.student)
        except MissingEntry:  # the answer cell is not a solution cell in this course's version
            continue
        comment.auto_comment = _comment(report, ex.id) if report else f"This notebook could not be graded: {error}"
    gradebook.db.commit()


def _ours(gradebook: Gradebook, course: Path, assignment: str) -> dict[str, Assignment]:
    """The assignment's notebooks that are ours (by the course's own release), each with our assignment it is.

    Raises `GraderError` when one of them lacks a test cell its rubric scores (an older course version).
    """
    ours: dict[str, Assignment] = {}
    # The course's own assignments first (its source/NAME/rubric.toml), then the shipped ones.
    lookup = course if (course / "source").is_dir() else None
    for nb in gradebook.find_assignment(assignment).notebooks:
        for folder in ("release", "source"):
            path = course / folder / assignment / f"{nb.name}.ipynb"
            if path.is_file():
                name = notebooks.read(path).metadata.get("grader", {}).get("assignment")
                if isinstance(name, str) and name in assignments.known(lookup):
                    ours[nb.name] = assignments.load(name, lookup)
                break
        if nb.name in ours:
            cells = {c.name for c in nb.grade_cells}
            missing = [
                ex.test_cell for ex in ours[nb.name].rubric.exercises if ex.test_cell and ex.test_cell not in cells
            ]
            if missing:
                raise GraderError(
                    f"{assignment}/{nb.name} in this course has no test cells {missing}: "
                    "regenerate it from the current solutions/ notebook"
                )
    return ours


def grade_course(
    course: str | Path,
    assignment: str,
    *,
    db_url: str | None = None,
    timeout: float | None = None,
    progress: Callable[[Recorded], None] | None = None,
) -> list[Recorded]:
    """Grade every submission of `assignment` in the nbgrader course at `course`; record each in its gradebook.

    Parameters
    ----------
    course: the course directory (with `submitted/`, `release/` or `source/`, and by default `gradebook.db`).
    assignment: the assignment's name in nbgrader (it must have been through `generate_assignment`).
    db_url: the gradebook's database URL; by default `sqlite:///<course>/gradebook.db`, which must exist.
    timeout: wall-clock limit per run of a notebook; by default the rubric's.
    progress: called with each submission's outcome as soon as it is recorded.
    """
    try:
        from nbgrader.api import Gradebook, MissingEntry  # (nbgrader: an optional extra, the `nbgrader` one)
    except ImportError:
        raise GraderError(
            "writing to an nbgrader gradebook needs nbgrader: pip install 'backprop-grader[nbgrader]'"
        ) from None

    course = Path(course).resolve()
    if db_url is None and not (course / "gradebook.db").is_file():
        raise GraderError(f"{course} is not an nbgrader course: it has no gradebook.db (or pass --db URL)")
    url = db_url or f"sqlite:///{course / 'gradebook.db'}"
    done: list[Recorded] = []
    with Gradebook(url) as gradebook, contextlib.ExitStack() as stack:
        try:
            ours = _ours(gradebook, course, assignment)
        except MissingEntry:
            raise GraderError(
                f"the gradebook at {url} has no assignment {assignment!r}: "
                f"run `nbgrader generate_assignment {assignment}` first"
            ) from None
        # One warm worker for the whole course. No run may read the course (the other students, the
        # gradebook), the solutions or the rubric.
        hidden = [course, *(folder for r in ours.values() for folder in hidden_folders(r))]
        pool = stack.enter_context(sandbox.Pool(hidden))
        for submission in submissions(course, assignment):
            graded = ours.get(submission.notebook)
            if graded is None:
                continue  # not a notebook of this assignment, or not one we grade: nbgrader's business
            try:
                report, error = grade_notebook(submission.path, assignment=graded, timeout=timeout, pool=pool), ""
            except NotANotebook as e:  # the student's file is no notebook: 0 for every test cell, and why
                report, error = None, str(e)
            record(gradebook, assignment, submission, report, graded.rubric, error)
            done.append(Recorded(submission, report, error))
            if progress:
                progress(done[-1])
    return done
