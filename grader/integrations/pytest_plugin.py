"""Grades as pytest results: the `grader` pytest plugin (registered through the `pytest11` entry point).

    pytest --grade NOTEBOOK [--grade-assignment NAME|DIR] [--grade-course DIR] [--grade-timeout S] [--grade-no-runs]

collects the notebook, and nothing else, as one test item per graded variable (`ex1::d_probs`) and one
per hidden re-run (`hidden::run-1`). The first item to run grades the notebook, once, through the same
isolated grader as `grader check` (the notebook runs in the sandbox, never in pytest's process); each
item then passes when its variable earns all its points, or fails with the variable's message and hint
as its whole failure text. The points ride along as properties (`--junitxml`). pytest's own machinery
works unchanged: `-k d_W`, `-x`, `-q`, `--junitxml`, `-p no:cacheprovider`.

Test files can ask for grades too, through the `grade` fixture: `grade("ex1", "d_probs")` fails the
test the same way. GitHub Classroom's Python grader needs real test functions, one per variable; `grader
classroom` writes such a file, reading the notebook from the `grade_notebook` ini option.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from grader.course import course_dir, resolve
from grader.errors import GraderError
from grader.reports import junit

# The modules that import nbformat or torch (the assignment's, grade's) are imported where they are first used:
# every pytest run where the grader is installed imports this plugin, grading or not.

if TYPE_CHECKING:
    from grader.assignment import Assignment
    from grader.rubric import Rubric
    from grader.verdicts import Report

_GRADING = pytest.StashKey["_Grading"]()
_INI_GRADING = pytest.StashKey["_Grading"]()


class GradeFailure(Exception):
    """A variable that does not earn its points: the message is the whole failure text."""


@dataclass
class _Grading:
    """One notebook, graded at most once per pytest session."""

    notebook: Path
    assignment: str | None
    timeout: float | None
    course: str | None = None
    """The course folder names are looked up in first (`--grade-course`, `grade_course`, $GRADER_COURSE)."""
    rubric: Rubric | None = None
    """The rubric it is graded by (known before it runs: the items are its variables)."""
    report: Report | None = None
    error: str = ""
    done: bool = field(default=False)

    def result(self) -> Report:
        """The notebook's `Report` (graded on first use), or raise `GradeFailure` with why it cannot be graded."""
        if not self.done:
            self.done = True
            from grader.grade import grade_notebook  # (nbformat, torch: see the note at the top)

            try:
                assignment, course = _target(self.assignment, self.course)
                self.report = grade_notebook(
                    self.notebook, assignment=assignment, timeout=self.timeout, course=course, embedded=True
                )
            except GraderError as e:
                self.error = str(e)
            except Exception as e:  # the grader's own failure: every item says it, on one line
                self.error = f"grader error: {type(e).__name__}: {e}"
        if self.report is None:
            raise GradeFailure(f"the notebook could not be graded: {self.error}")
        return self.report

    def check(self, exercise: str, name: str, properties: list) -> None:
        """Pass if `name` of `exercise` earns all its points; record them in `properties`."""
        report = self.result()
        found = next((v for v in report.variables if v.exercise == exercise and v.name == name), None)
        if found is None:
            raise GradeFailure(f"{report.assignment} grades no variable {name} in {exercise}")
        properties += [
            ("points", f"{found.points:g}"),
            ("max_points", f"{found.max_points:g}"),
            ("status", found.status),
        ]
        failure = junit.variable_failure(found)  # (the same words as `grader check --junit`)
        if failure:
            raise GradeFailure(failure)

    def check_run(self, index: int) -> None:
        """Pass if hidden run `index` (from 1) ran to the end with every variable right in it (`junit.run_failure`)."""
        failure = junit.run_failure(self.result(), index)
        if failure:
            raise GradeFailure(failure)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grader", "grading a backprop notebook (backprop-grader)")
    group.addoption("--grade", metavar="NOTEBOOK", help="grade this notebook: one test item per graded variable")
    group.addoption(
        "--grade-assignment", metavar="NAME|DIR", help="grade it as this assignment (default: its metadata)"
    )
    group.addoption(
        "--grade-course", metavar="DIR", help="the course folder where assignments are looked up first ($GRADER_COURSE)"
    )
    group.addoption("--grade-timeout", metavar="S", type=float, help="wall-clock limit per run (default: the rubric's)")
    group.addoption(
        "--grade-no-runs",
        action="store_true",
        help="no items for the hidden re-runs (their failures still fail the variables)",
    )
    parser.addini("grade_notebook", "the notebook the `grade` fixture grades (relative to the rootdir)")
    parser.addini("grade_assignment", "the assignment the `grade` fixture grades it as (default: its metadata)")
    parser.addini("grade_course", "the course folder where assignment names are looked up first")


def _target(assignment: str | None, course: str | None) -> tuple[Assignment | str | None, Path | None]:
    """(what to grade as: None, `lecture`, or the loaded assignment; the course folder), as the CLI resolves it."""
    from grader import assignment as assignments  # (nbformat: see the note at the top)

    if assignment is None or assignment == assignments.LECTURE:
        return assignment, course_dir(course)
    location = resolve(assignment, course)
    assert location is not None  # (a name is given)
    return assignments.load_at(location), course_dir(course)


def _rubric(path: Path, assignment: str | None, course: str | None) -> Rubric:
    from grader.grade import graded_rubric  # (nbformat: see the note at the top)

    try:
        target, folder = _target(assignment, course)
        return graded_rubric(path, target, folder, embedded=True)
    except GraderError as e:
        raise pytest.UsageError(f"--grade: {e}") from None


def pytest_configure(config: pytest.Config) -> None:
    notebook = config.getoption("grade")
    if not notebook:
        return
    path = Path(notebook)
    assignment = config.getoption("grade_assignment")
    course = config.getoption("grade_course") or config.getini("grade_course") or None
    timeout = config.getoption("grade_timeout")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise pytest.UsageError("--grade-timeout must be a positive number of seconds")
    # a usage error now (no such file, not a notebook, no assignment), not a failure of every item later
    config.stash[_GRADING] = _Grading(path, assignment, timeout, course, rubric=_rubric(path, assignment, course))
    # the notebook is all there is to collect (no test files); `NOTEBOOK::ex1::d_probs` still selects items
    mine = [a for a in config.args if Path(a.split("::")[0]).resolve() == path.resolve()]
    config.args[:] = mine or [str(path)]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    grading = parent.config.stash.get(_GRADING, None)
    if grading is not None and file_path.resolve() == grading.notebook.resolve():
        return NotebookFile.from_parent(parent, path=file_path, grading=grading)
    return None


class NotebookFile(pytest.File):
    """The graded notebook: an exercise per collector, its variables (and the hidden re-runs) its test items."""

    def __init__(self, *, grading: _Grading, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grading = grading

    def collect(self) -> Iterator[Group]:
        rubric = self.grading.rubric
        assert rubric is not None  # (collected only for `--grade`, whose rubric `pytest_configure` read)
        for ex in rubric.exercises:
            yield Group.from_parent(
                self,
                name=ex.id,
                grading=self.grading,
                items=[(var.name, {"exercise": ex.id, "variable": var.name}) for var in ex.graded],
            )
        if rubric.hidden_runs and not self.config.getoption("grade_no_runs"):
            yield Group.from_parent(
                self,
                name="hidden",
                grading=self.grading,
                items=[(f"run-{i}", {"index": i}) for i in range(1, len(rubric.hidden_runs) + 1)],
            )


class Group(pytest.Collector):
    """An exercise (or the hidden re-runs): `NOTEBOOK::ex1::d_probs` selects one of its items."""

    def __init__(self, *, grading: _Grading, items: list[tuple[str, dict]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grading, self.entries = grading, items

    def collect(self) -> Iterator[_GradeItem]:
        for name, fields in self.entries:
            kind = HiddenRunItem if "index" in fields else VariableItem
            yield kind.from_parent(self, name=name, grading=self.grading, **fields)


class _GradeItem(pytest.Item):
    def __init__(self, *, grading: _Grading, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grading = grading

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None) -> str:
        if isinstance(excinfo.value, GradeFailure):
            return str(excinfo.value)
        # the grader's own failure: one line, no traceback of its internals
        return f"grader error: {excinfo.typename}: {excinfo.value}"

    def reportinfo(self) -> tuple[Path, int | None, str]:
        assert self.parent is not None  # (an item is made by its `Group`)
        return self.grading.notebook, None, f"{self.parent.name}::{self.name}"


class VariableItem(_GradeItem):
    """One graded variable of the notebook."""

    def __init__(self, *, exercise: str, variable: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exercise, self.variable = exercise, variable

    def runtest(self) -> None:
        self.grading.check(self.exercise, self.variable, self.user_properties)


class HiddenRunItem(_GradeItem):
    """One hidden re-run of the notebook, with other parameters."""

    def __init__(self, *, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index

    def runtest(self) -> None:
        self.grading.check_run(self.index)


@pytest.fixture
def grade(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`grade(exercise, variable)`: fail the test with the variable's message unless it earns all its points.

    The notebook is the `grade_notebook` ini option (or --grade), graded once per session.
    """
    config = request.config
    grading = config.stash.get(_GRADING, None) or config.stash.get(_INI_GRADING, None)
    if grading is None:
        notebook = config.getini("grade_notebook")
        if not notebook:
            raise pytest.UsageError(
                "the grade fixture needs a notebook: set grade_notebook in the ini file, or --grade"
            )
        path = Path(notebook) if Path(notebook).is_absolute() else Path(config.rootpath) / notebook
        assignment = config.getini("grade_assignment") or None
        if assignment and ("/" in assignment or "\\" in assignment) and not Path(assignment).is_absolute():
            assignment = str(Path(config.rootpath) / assignment)  # (a folder, as `grader classroom` writes it)
        course = config.getini("grade_course") or None
        grading = config.stash[_INI_GRADING] = _Grading(path, assignment, None, course)

    def check(exercise: str, variable: str) -> None:
        try:
            grading.check(exercise, variable, request.node.user_properties)
        except GradeFailure as e:
            pytest.fail(str(e), pytrace=False)

    return check
