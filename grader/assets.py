"""Where the released notebooks, rubrics and data live.

The top-level `assignments/` and `data/` folders of the repository are the source of truth. A
wheel carries copies of them under `grader/_assets/` (see `pyproject.toml`); a source checkout or
an editable install reads the repository folders directly.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "_assets"
_REPOSITORY = Path(__file__).resolve().parent.parent


def _root() -> Path:
    return _PACKAGED if _PACKAGED.is_dir() else _REPOSITORY


def assignments_dir() -> Path:
    """The folder holding each assignment's released notebook and rubric."""
    return _root() / "assignments"


def data_dir() -> Path:
    """The folder holding the data sets the assignments read."""
    return _root() / "data"


def names_path() -> str:
    """Path of `names.txt`, the data set of the makemore exercises (for notebooks to read)."""
    return str(data_dir() / "names.txt")


def solutions_dir() -> Path:
    """The instructor's solution notebooks: a source checkout's, or those an instructor's autograder package
    carries (`grader gradescope build`; a wheel for students carries none)."""
    packaged = _PACKAGED / "solutions"
    return packaged if packaged.is_dir() else _REPOSITORY / "solutions"
