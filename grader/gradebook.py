"""Grade an nbgrader course's submissions with this grader and write the scores into its gradebook.

`nbgrader autograde` runs the test cells inside the student's own kernel, where a patched
`torch.allclose` passes every check. This grades each `submitted/<student>/<assignment>/<notebook>.ipynb`
with `grade_notebook` instead (a separate process, references computed here) and stores, through
nbgrader's own `Gradebook` API, each exercise's points as the auto score of its test cell and the
report's messages as the auto comment of its answer cell, so formgrader shows them. As with
`nbgrader autograde`, a score a grader entered by hand is kept and the cell is flagged for review.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from grader import rubric as rubrics
from grader.errors import GraderError
from grader.grade import grade_notebook
from grader.score import Report


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


def _comment(report: Report, exercise: str) -> str:
    """The auto comment of an answer cell: what is wrong with each variable that lost points."""
    lines = [v.message for v in report.variables if v.exercise == exercise and v.points < v.max_points]
    if report.status == "failed":
        lines.insert(0, f"The notebook did not run to the end: {report.error}")
    return "\n".join(lines)


def record(gradebook, assignment: str, submission: Submission, report: Report | None, rubric: rubrics.Rubric,
           error: str = "") -> None:
    """Write one graded submission into an open nbgrader `Gradebook` (no report: 0 points, and `error` says why)."""
    from nbgrader.api import MissingEntry

    gradebook.update_or_create_student(submission.student)
    try:
        gradebook.find_submission(assignment, submission.student)
    except MissingEntry:
        gradebook.add_submission(assignment, submission.student)
    scores = {e.id: e.score for e in report.exercises} if report else {}
    for ex in rubric.exercises:
        if ex.test_cell is None:
            continue
        grade = gradebook.find_grade(ex.test_cell, submission.notebook, assignment, submission.student)
        grade.auto_score = float(scores.get(ex.id, 0.0))
        grade.needs_manual_grade = grade.manual_score is not None  # a hand-entered score: have it reviewed
        try:
            comment = gradebook.find_comment(ex.cell, submission.notebook, assignment, submission.student)
        except MissingEntry:  # the answer cell is not a solution cell in this course's version
            continue
        comment.auto_comment = _comment(report, ex.id) if report else f"This notebook could not be graded: {error}"
    gradebook.db.commit()


def grade_course(course: str | Path, assignment: str, *, db_url: str | None = None, timeout: float | None = None,
                 progress: Callable[[Recorded], None] | None = None) -> list[Recorded]:
    """Grade every submission of `assignment` in the nbgrader course at `course`; record each in its gradebook.

    Parameters
    ----------
    course: the course directory (with `submitted/` and, by default, `gradebook.db`).
    assignment: the assignment's name in nbgrader (it must have been through `generate_assignment`).
    db_url: the gradebook's database URL; by default `sqlite:///<course>/gradebook.db`.
    timeout: wall-clock limit per run of a notebook; by default the rubric's.
    progress: called with each submission's outcome as soon as it is recorded.
    """
    try:
        from nbgrader.api import Gradebook, MissingEntry
    except ImportError:
        raise GraderError("writing to an nbgrader gradebook needs nbgrader: pip install 'backprop-grader[nbgrader]'") from None

    course = Path(course).resolve()
    url = db_url or f"sqlite:///{course / 'gradebook.db'}"
    done: list[Recorded] = []
    with Gradebook(url) as gradebook:
        try:
            notebooks = {nb.name for nb in gradebook.find_assignment(assignment).notebooks}
        except MissingEntry:
            raise GraderError(f"the gradebook at {url} has no assignment {assignment!r}: "
                              f"run `nbgrader generate_assignment {assignment}` first") from None
        ours: dict[str, str] = {}  # notebook name -> our assignment, from the course's own copy, not the student's
        for submission in submissions(course, assignment):
            if submission.notebook not in notebooks:
                continue  # nbgrader ignores notebooks that are not part of the assignment; so do we
            if submission.notebook not in ours:
                ours[submission.notebook] = _assignment_of_release(course, assignment, submission.notebook)
            rubric = rubrics.load(ours[submission.notebook])
            try:
                report, error = grade_notebook(submission.path, assignment=rubric.assignment, timeout=timeout), ""
            except GraderError as e:  # not a notebook at all: 0 for every test cell, and why
                report, error = None, str(e)
            record(gradebook, assignment, submission, report, rubric, error)
            done.append(Recorded(submission, report, error))
            if progress:
                progress(done[-1])
    return done


def _assignment_of_release(course: Path, assignment: str, notebook: str) -> str:
    """Which of our assignments a notebook of the course is, read from the course's own release (or source)."""
    from grader import notebook as notebooks

    for folder in ("release", "source"):
        path = course / folder / assignment / f"{notebook}.ipynb"
        if path.is_file():
            return notebooks.assignment_of(notebooks.read(path), path)
    raise GraderError(f"cannot tell which assignment {assignment}/{notebook} is: no release/ or source/ copy")
