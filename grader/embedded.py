"""Stage 0: the copy of an assignment a released notebook carries, for a student who has nothing else.

`grader release` writes into the student notebook's `metadata.grader`: the assignment's name, the rubric's
values (what the notebooks decided filled in; the instructor's private hidden runs never), the parameters
the release publishes, and a sha256 of each locked code cell and each data file. With it, `grader check`
on a student's copy, alone in a folder with only `pip install backprop-grader`, grades it as the
instructor's `grader check --course` would (the instructor's private hidden runs aside).

Guarantees:
- Only `grader check` and `pytest --grade` ever read this copy, and only when the name it carries is found
  nowhere else; the report says so in a note. `grade`, `gradebook`, `gradescope run` and Dask never do:
  the instructor's grading trusts nothing a submission carries.
- Nothing in it is executed: the parameters are JSON values, the rubric is data for `rubric.parse`.
- The release is rebuilt from the student's own cells only where each locked cell's sha256 matches what the
  release recorded; an edited or deleted locked cell is an error that names it, never a guess.
- Data files are found beside the notebook and must match the release's sha256.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import nbformat

from grader import notebook
from grader.assignment import Assignment, build
from grader.course import Location
from grader.errors import UnknownAssignment

KEY = "release"
"""The key under `metadata.grader` that holds the embedded copy."""

NOTE = (
    "graded with the copy of the assignment this notebook carries (no course folder or shipped assignment "
    "{name} here): your instructor grades with their own copy, and may run hidden runs of their own"
)


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def metadata(assignment: Assignment) -> dict:
    """What a release of `assignment` carries in `metadata.grader` (beside `assignment`, its name)."""
    released = assignment.released
    locked = {
        notebook.grade_id(c): _sha256(c.source)
        for c in released.cells
        if c.cell_type == "code" and notebook.grade_id(c) and not notebook.is_solution(c)
    }
    public = {k: v for k, v in assignment.raw.items() if k not in ("notebook",)}
    try:
        published = json.loads(json.dumps(dict(assignment.published), allow_nan=False))
    except (TypeError, ValueError):
        published = None  # (a parameter JSON cannot hold: no embedded copy can be checked from)
    return {
        "rubric": public,
        "parameters": published,
        "cells": locked,
        "data": {path.name: _sha256(path.read_bytes()) for path in assignment.data.values()},
    }


def carried(nb: nbformat.NotebookNode) -> dict | None:
    """The embedded copy in `nb`'s metadata, if it has one of the right shape."""
    grader = nb.metadata.get("grader")
    found = grader.get(KEY) if isinstance(grader, dict) else None
    if not isinstance(found, dict):
        return None
    shapes = {"rubric": dict, "parameters": dict, "cells": dict, "data": dict}
    return found if all(isinstance(found.get(k), t) for k, t in shapes.items()) else None


def load(nb: nbformat.NotebookNode, path: Path) -> Assignment:
    """The assignment `nb` carries, with its release rebuilt from `nb`'s own cells. `UnknownAssignment` where it
    carries none, or where the release cannot be rebuilt (a locked cell edited or deleted, a data file
    missing), naming what to restore."""
    name = notebook.claimed_assignment(nb)
    copy_ = carried(nb)
    if copy_ is None or not isinstance(name, str):
        raise UnknownAssignment(f"{path}: the notebook carries no copy of its assignment")
    cells = {notebook.grade_id(c): c for c in nb.cells if c.cell_type == "code" and notebook.grade_id(c)}
    for gid, digest in copy_["cells"].items():
        if gid not in cells:
            raise UnknownAssignment(
                f"{path}: the locked cell {gid!r} was deleted, so the release cannot be rebuilt here to check "
                "against; restore it (copy it from the released notebook), or let your instructor grade it"
            )
        if _sha256(cells[gid].source) != digest:
            raise UnknownAssignment(
                f"{path}: the locked cell {gid!r} was edited, so the release cannot be rebuilt here to check "
                "against (your instructor runs the released version); undo the edit to check it here"
            )
    folder = path.resolve().parent
    for file, digest in copy_["data"].items():
        found = folder / Path(str(file)).name
        if not found.is_file() or _sha256(found.read_bytes()) != digest:
            why = "is not beside it" if not found.is_file() else "beside it differs from the released one"
            raise UnknownAssignment(
                f"{path}: the assignment reads the data file {file}, which {why}: put the released {file} "
                "in the notebook's folder to check it here (your instructor checks it with theirs)"
            )
    # The release: the student's notebook with the metadata's copy and every answer cell's code taken out
    # (only locked cells, verified above, are read from it).
    released = copy.deepcopy(nb)
    released.metadata.pop("grader", None)
    for cell in released.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if notebook.is_solution(cell):
                cell.source = ""
    location = Location(
        name=name,
        rubric=folder / f"{name}.toml (carried by {path.name})",
        released=path,
        solution=None,
        data=folder,
        hidden_runs=None,
        hidden=(),
        origin="embedded",
    )
    released_bytes = nbformat.writes(released).encode("utf-8")
    return build(location, dict(copy_["rubric"]), released, released_bytes, None, None, (), copy_["parameters"])
