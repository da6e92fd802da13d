"""Stage 0: where an assignment's files are. The one place that turns a name into paths.

An assignment is found in one of three places, in this order:

1. an assignment folder given as such (`--assignment DIR`, or a rubric file `--assignment DIR/rubric.toml`);
2. an instructor's course folder in nbgrader's layout (`--course DIR` or `$GRADER_COURSE`):

       COURSE/source/NAME/NAME.ipynb       the solution: an nbgrader source notebook
       COURSE/source/NAME/rubric.toml      its rubric
       COURSE/source/NAME/<data files>     what the rubric's [data] table names
       COURSE/source/NAME/mistakes/*.ipynb mistakes the author wrote (`grader validate`)
       COURSE/release/NAME/NAME.ipynb      the student notebook (`grader release NAME`)
       COURSE/private/NAME/hidden_runs.toml the instructor's own hidden runs, outside what nbgrader releases

3. the assignments shipped with the grader (`assets.assignments_dir()`).

Guarantees:
- A name is checked against `[A-Za-z0-9_-]+` before any path is joined to it, so that a name read from a
  student's notebook is only ever looked up, never followed as a path (`..`, `/abs`, `~`).
- Only `locate_dir` follows a path, and only the command line calls it (never with a notebook's words).
- Every folder that holds what a run must not read (the solution, the private hidden runs, the class's
  submissions) is listed in `Location.hidden`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from grader import assets
from grader.errors import UnknownAssignment, UsageError

NAME = re.compile(r"[A-Za-z0-9_-]+")
"""What an assignment's name may be: it becomes a folder and a file name."""

RUBRIC = "rubric.toml"
"""The rubric's file name in an assignment folder (a shipped assignment's is `NAME.toml`)."""

SOLUTION = "solution"
"""In an assignment folder that an autograder carries: the folder of the solution, where an answer is checked
against it."""

HIDDEN_RUNS = "hidden_runs.toml"
"""The instructor's own hidden runs, in `COURSE/private/NAME/`."""

ENVIRONMENT = "GRADER_COURSE"
"""The environment variable that gives the course folder when `--course` does not."""

# A course's folders that runs must never read: the solutions, the private runs, the class's work.
_PRIVATE = ("source", "private", "submitted", "autograded", "feedback", "gradebook.db")


@dataclass(frozen=True)
class Location:
    """Where one assignment's files are."""

    name: str
    """The assignment's name (the folder's, or the shipped rubric's stem)."""
    rubric: Path
    """The rubric file."""
    released: Path
    """The student notebook (it may not exist yet: `grader release` makes it)."""
    solution: Path | None
    """The instructor's solution notebook where this installation has one; None where it has none."""
    data: Path
    """The folder holding the data files the rubric's [data] table names."""
    hidden_runs: Path | None
    """The instructor's private hidden runs file, where there is one."""
    hidden: tuple[Path, ...]
    """Folders and files no run may read (beside the rubric's and the release's own folder)."""
    origin: str
    """`shipped`, `lecture` (the built-in rubric of lecture notebooks), `course` (a course folder's source/NAME),
    `folder` (an assignment folder given as a path) or `embedded` (the copy a student notebook carries)."""
    source: Path | None = None
    """A course assignment's source folder (the author's files: solution, rubric, data, mistakes)."""

    @property
    def mistakes(self) -> Path | None:
        """The folder of mistakes the author wrote, where there is a source folder."""
        return self.source / "mistakes" if self.source else None


def check_name(name: object, where: str = "assignment") -> str:
    """`name` if it may name an assignment, else a `UsageError` saying what a name may hold."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"not an {where} name: {name!r} (letters, digits, _ and - only)")
    return name


def course_dir(course: str | Path | None) -> Path | None:
    """The course folder: `course` if given, else `$GRADER_COURSE`, else None. A `UsageError` if it is not a
    folder with a `source/` in it (nbgrader's layout)."""
    given = course if course is not None else os.environ.get(ENVIRONMENT) or None
    if given is None:
        return None
    folder = Path(given).expanduser().resolve()
    if not (folder / "source").is_dir():
        why = "does not exist" if not folder.exists() else "has no source/ folder"
        raise UsageError(
            f"course {given}: {why}; a course folder holds source/NAME/NAME.ipynb and source/NAME/{RUBRIC} "
            f"(nbgrader's layout; `grader new NAME --course {given}` makes one)"
        )
    return folder


def in_course(course: Path, name: str) -> Location | None:
    """Assignment `name` of the course folder `course`, or None if the course has no source/NAME/."""
    source = course / "source" / check_name(name)
    if not (source / RUBRIC).is_file():  # (an nbgrader-only assignment of the course: not the grader's)
        return None
    private = course / "private" / name / HIDDEN_RUNS
    return Location(
        name=name,
        rubric=source / RUBRIC,
        released=course / "release" / name / f"{name}.ipynb",
        solution=source / f"{name}.ipynb",
        data=source,
        hidden_runs=private if private.is_file() else None,
        hidden=tuple(course / p for p in _PRIVATE),
        origin="course",
        source=source,
    )


def shipped(name: str) -> Location | None:
    """Assignment `name` as shipped with the grader, or None if it ships no such assignment."""
    rubric = assets.assignments_dir() / f"{check_name(name)}.toml"
    if not rubric.is_file():
        return None
    solution = assets.solutions_dir() / f"{name}.ipynb"
    return Location(
        name=name,
        rubric=rubric,
        released=assets.assignments_dir() / f"{name}.ipynb",
        solution=solution if solution.is_file() else None,
        data=assets.data_dir(),
        hidden_runs=None,
        hidden=(assets.solutions_dir(),),
        origin="shipped",
    )


def shipped_names() -> list[str]:
    """Names of the assignments shipped with the grader."""
    return sorted(p.stem for p in assets.assignments_dir().glob("*.toml") if NAME.fullmatch(p.stem))


def course_names(course: Path | None) -> list[str]:
    """Names of the course's assignments (its source/ folders with a rubric)."""
    if course is None:
        return []
    return sorted(p.parent.name for p in (course / "source").glob(f"*/{RUBRIC}") if NAME.fullmatch(p.parent.name))


def known(course: Path | None) -> list[str]:
    """Every name `locate` finds: the course's, then the shipped ones it does not shadow."""
    ours = course_names(course)
    return ours + [n for n in shipped_names() if n not in ours]


def locate(name: str, course: Path | None) -> Location:
    """Assignment `name`: the course's if it has one, else the shipped one, else `UnknownAssignment` naming
    what exists. `name` is only looked up, never followed as a path."""
    check_name(name)
    found = (in_course(course, name) if course else None) or shipped(name)
    if found is None and course and (course / "source" / name).is_dir():
        raise UnknownAssignment(
            f"{course / 'source' / name} has no {RUBRIC}: the grader grades an assignment of the course by its "
            f"rubric (`grader new` writes one; docs/rubric.md lists its keys)"
        )
    if found is None:
        hint = (
            f"; looked in {course / 'source'} and among the grader's"
            if course
            else (f"; a course's assignment needs --course DIR (or ${ENVIRONMENT})")
        )
        raise UnknownAssignment(f"unknown assignment {name!r} (known: {', '.join(known(course)) or 'none'}){hint}")
    return found


def locate_dir(path: Path) -> Location:
    """The assignment in the folder at `path` (or whose rubric file `path` is): a course's source/NAME/, or
    a folder holding `rubric.toml` and the student notebook `NAME.ipynb` (NAME the folder's name)."""
    path = path.expanduser().resolve()
    rubric = path if path.is_file() else path / RUBRIC
    folder = rubric.parent
    if not rubric.is_file():
        raise UsageError(f"{path}: no {RUBRIC} here; an assignment folder holds {RUBRIC} and NAME.ipynb")
    # (a rubric file of another name, NAME.toml, names its assignment as a shipped one's does)
    name = check_name(folder.name if rubric.name == RUBRIC else rubric.stem, "assignment folder")
    if folder.parent.name == "source" and (folder / f"{name}.ipynb").is_file():
        located = in_course(folder.parent.parent, name)
        assert located is not None  # (the folder exists: it holds the rubric)
        return located
    # (an autograder's copy may also hold the solution and the private hidden runs: both hidden from runs)
    solution = folder / SOLUTION / f"{name}.ipynb"
    private = folder / HIDDEN_RUNS
    return Location(
        name=name,
        rubric=rubric,
        released=folder / f"{name}.ipynb",
        solution=solution if solution.is_file() else None,
        data=folder,
        hidden_runs=private if private.is_file() else None,
        hidden=(folder / SOLUTION, private),
        origin="folder",
    )


def resolve(assignment: str | None, course: str | Path | None) -> Location | None:
    """What the command line names: `--assignment` as a folder (if it contains a path separator or is an
    existing folder or .toml file) or a name, looked up in the course then among the shipped ones; None when
    neither is given (the notebook's metadata will say)."""
    folder = course_dir(course)
    if assignment is None:
        return None
    if NAME.fullmatch(assignment) and not Path(assignment).is_dir():
        return locate(assignment, folder)
    return locate_dir(Path(assignment))


def course_dir_for_new(given: str | Path | None) -> Path:
    """The course folder `grader new` writes into: --course or `$GRADER_COURSE`, made if it does not exist."""
    chosen = given if given is not None else os.environ.get(ENVIRONMENT) or None
    if chosen is None:
        raise UsageError(f"grader new needs --course DIR (or ${ENVIRONMENT}): the course folder to write into")
    folder = Path(chosen).expanduser().resolve()
    (folder / "source").mkdir(parents=True, exist_ok=True)
    return folder
