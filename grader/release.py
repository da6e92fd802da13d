"""For authors: make the student notebook from the instructor's solution (`grader release NAME`).

The real `nbgrader generate_assignment` does the work, in a scratch course of its own (so that an instructor's
course needs no nbgrader database and no nbgrader_config.py for it): each `### BEGIN SOLUTION` ... `### END
SOLUTION` region is taken out (the `d_x = None` lines above it stay), outputs are cleared, locked cells are
locked and checksummed for nbgrader. The grader then writes into the notebook's `metadata.grader` the copy of
the assignment a student's `grader check` reads where nothing else has it (`grader.embedded`), and copies the
data files the rubric names beside it.

Guarantees:
- Only the solution notebook and the data files go into nbgrader's scratch course: never the author's
  mistakes/ folder, the private hidden runs or anything else of the source folder.
- The written release is graded once before this returns: a release that does not load (a rubric that names
  a cell the release lacks) is an error here, not in front of the class.
- A shipped assignment is released only into a source checkout's assignments/, never into site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import nbformat

from grader import assignment as assignments
from grader import embedded
from grader.course import Location
from grader.errors import GraderError, UsageError

CONFIG = """\
# nbgrader settings for a course the grader writes assignments into (`grader new` writes this file where a
# course has none; `grader release` uses the same settings in a scratch course of its own).
c = get_config()  # noqa: F821 -- provided by nbgrader
# The answer cells keep their `d_x = None` lines; nbgrader's own stub would add `raise NotImplementedError()`,
# which stops a student's notebook at the first exercise left undone.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Never released by `nbgrader generate_assignment` either: the author's mistakes are the solution with one
# change each.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "mistakes"]
"""


def require_nbgrader() -> None:
    """A `UsageError` saying what to install where nbgrader, which releases a notebook, is missing."""
    try:
        import nbgrader  # noqa: F401 -- only to say what to install when it is missing
    except ImportError:
        raise UsageError(
            "releasing a notebook needs nbgrader: pip install 'backprop-grader[nbgrader]' (or pip install nbgrader)"
        ) from None


def generate(solution: Path, out: Path, name: str | None = None) -> Path:
    """Run `nbgrader generate_assignment` on `solution` (alone) and write the student notebook to `out`."""
    name = name or solution.stem
    require_nbgrader()
    with tempfile.TemporaryDirectory(prefix="grader-release-") as tmp:
        course = Path(tmp)
        (course / "source" / name).mkdir(parents=True)
        shutil.copyfile(solution, course / "source" / name / f"{name}.ipynb")
        (course / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
        # nbgrader runs `alembic` to make its gradebook: found beside this interpreter even when the virtual
        # environment is not activated
        env = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        proc = subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force"],
            cwd=course,
            capture_output=True,
            text=True,
            env=env,
        )
        released = course / "release" / name / f"{name}.ipynb"
        if proc.returncode != 0 or not released.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise GraderError(f"nbgrader generate_assignment {name} failed:\n{tail}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(released, out)
    return out


def embed(released: Path, location: Location) -> None:
    """Write the assignment's copy (`grader.embedded`) into the release at `released`, graded by its rubric."""
    nb = nbformat.read(released, as_version=4)
    nb.metadata.pop("grader", None)  # (what the solution carried: the copy is made from the release alone)
    nb.metadata["grader"] = {"assignment": location.name}
    nbformat.write(nb, released)
    loaded = assignments.load_at(location)
    nb.metadata["grader"][embedded.KEY] = embedded.metadata(loaded)
    nbformat.validate(nb)
    nbformat.write(nb, released)


def release(location: Location) -> Path:
    """Make the student notebook of the assignment at `location` from its solution; return its path."""
    if location.solution is None or not location.solution.is_file():
        raise UsageError(f"assignment {location.name} has no solution notebook here to release")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if location.origin == "shipped" and site in location.released.resolve().parents:
        raise UsageError(
            f"{location.name} ships with the grader: release it in a source checkout, or copy it into a course "
            "folder (`grader new`) to make your own"
        )
    out = location.released
    generate(location.solution, out, location.name)
    if location.origin == "course":
        # what students need beside the notebook: the data files the rubric names (never the source folder)
        rubric_data = assignments.data_files(location)
        for path in rubric_data:
            shutil.copyfile(path, out.parent / path.name)
    embed(out, location)
    return out
