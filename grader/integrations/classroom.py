"""GitHub Classroom out of the box: the files a student repository needs for autograding.

`grader classroom ASSIGNMENT --out DIR` writes, for the student repository (beside the released
notebook the instructor adds):

- `.github/workflows/classroom.yml`: GitHub Classroom's workflow, one step of its Python grader
  (`classroom-resources/autograding-python-grader`), worth the assignment's points, and its reporter;
- `.github/classroom/setup.sh`: the grader step's setup, the CPU build of PyTorch first, then this package;
- `pytest.ini`: `grade_notebook` names the notebook;
- `grade_test.py`: one test function per graded variable, each `grade("ex1", "d_probs")`;
- for an assignment of the instructor's own course (not shipped with the package the setup installs):
  `.github/classroom/assignment/NAME/`, its rubric, student notebook and data (never its solution: an
  assignment whose answers are checked against the solution is refused), which `pytest.ini` names.

The Python grader runs pytest on the `*_test.py` files and awards `max-score * passed / total`; every
variable of the shipped assignments is worth 1 point, so with `max-score` the assignment's points the
score is exactly `grader check`'s. (It needs real test functions: it orders tests by their line in the
test file.)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from grader import assignment as assignments
from grader.assignment import Assignment
from grader.errors import GraderError

TORCH = "2.13.0"
"""The PyTorch release the setup installs (its CPU build)."""

WORKFLOW = """\
# GitHub Classroom autograding for {assignment} (written by `grader classroom {assignment}`).
# Each graded variable of {notebook} is one pytest test (grade_test.py); the Python grader awards
# max-score x passed / total: {points} points for {tests} variables of one point each.
name: Autograding Tests
'on':
  - push
  - workflow_dispatch
  - repository_dispatch
permissions:
  checks: write
  actions: read
  contents: read
jobs:
  run-autograding-tests:
    runs-on: ubuntu-latest
    if: github.actor != 'github-classroom[bot]'
    steps:
      - name: Checkout code
        uses: actions/checkout@v4
      - name: Gradients
        id: gradients
        uses: classroom-resources/autograding-python-grader@v1
        with:
          timeout: 15
          max-score: {points}
          setup-command: sh .github/classroom/setup.sh
      - name: Autograding Reporter
        uses: classroom-resources/autograding-grading-reporter@v1
        env:
          GRADIENTS_RESULTS: "${{{{steps.gradients.outputs.result}}}}"
        with:
          runners: gradients
"""

SETUP = """\
#!/bin/sh
# The grader's setup: PyTorch's CPU build first (PyPI's Linux wheels are the multi-GB CUDA ones), then
# the grader. TORCH_INDEX_URL set to an empty value keeps pip's own index (a machine with a local mirror).
set -e
index="${{TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}}"
pip install "torch=={torch}" ${{index:+--index-url "$index"}}
pip install {package}
"""

PYTEST_INI = """\
# pytest settings for the autograder: the notebook every test in grade_test.py grades.
[pytest]
grade_notebook = {notebook}
grade_assignment = {assignment}
addopts = -p no:cacheprovider
"""

TESTS = '''\
"""The graded variables of {notebook}, one test each (written by `grader classroom {assignment}`).

The notebook is graded once, in a separate isolated process, by the grader; a test fails with the
variable's verdict and hint. Run `pytest` to see what the autograder will see.
"""

'''


def _function_name(exercise: str, variable: str) -> str:
    return "test_" + re.sub(r"\W", "_", f"{exercise}__{variable}")


CARRIED = Path(".github/classroom/assignment")
"""Where a course assignment's files go in the student repository."""


def write(graded: Assignment, out: Path, package: str = "backprop-grader") -> list[Path]:
    """Write the student repository's autograding files for `graded` into `out`; return their paths."""
    rubric, assignment = graded.rubric, graded.name
    needs = [ex.id for ex in rubric.exercises if ex.kind == "values" and ex.source == "solution"]
    if needs:
        raise GraderError(
            f"{assignment}: the answers of {', '.join(needs)} are checked against the instructor's "
            "solution, which a student repository must not hold; grade this assignment with "
            "`grader grade`, nbgrader or Gradescope instead"
        )
    notebook = rubric.released.name
    variables = [(ex.id, v) for ex in rubric.exercises for v in ex.graded]
    points = rubric.max_score
    files = {
        Path(".github/workflows/classroom.yml"): WORKFLOW.format(
            assignment=assignment, notebook=notebook, points=f"{points:g}", tests=len(variables)
        ),
        Path(".github/classroom/setup.sh"): SETUP.format(torch=TORCH, package=package),
        Path("pytest.ini"): PYTEST_INI.format(
            notebook=notebook,
            assignment=assignment if graded.location.origin == "shipped" else (CARRIED / assignment).as_posix(),
        ),
        Path("grade_test.py"): TESTS.format(notebook=notebook, assignment=assignment)
        + "\n\n".join(f"def {_function_name(ex, v.name)}(grade):\n    grade({ex!r}, {v.name!r})" for ex, v in variables)
        + "\n",
    }
    written = []
    if graded.location.origin != "shipped":
        # the package the setup installs does not have this assignment: the repository carries it, as an
        # assignment folder (rubric.toml, the student notebook, the data), never the solution
        folder = out / CARRIED / assignment
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in assignments.folder_files(graded, private=False).items():
            shutil.copyfile(source, folder / name)
        written += sorted(p for p in folder.iterdir())
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
