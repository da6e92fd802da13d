"""Gradescope: build an autograder zip, and turn a `Report` into Gradescope's results.json.

Gradescope unpacks the zip into `/autograder/source`, runs `setup.sh` once to build its image, and
for every submission runs `run_autograder`, which must write `/autograder/results/results.json`:
a top-level `score`, `execution_time` and `output`, and `tests`, here one per graded variable
(`Ex1 d_probs`) plus, for each hidden re-run, one worth no points whose details students see only
when the grades are published (`visibility` as the builder is told).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path

from grader import assets, sandbox
from grader import assignment as assignments
from grader.assignment import Assignment
from grader.course import check_name
from grader.errors import GraderError, NotANotebook, UsageError
from grader.grade import grade_notebook
from grader.verdicts import PASSING, Report

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")
"""Gradescope's visibility settings, from most to least private."""
MAX_OUTPUT = 64_000
"""Characters of top-level output at most (a notebook can raise in many cells)."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""Where PyTorch publishes its CPU-only builds (PyPI's Linux wheels are the large CUDA ones)."""


def _test_name(exercise: str, variable: str) -> str:
    return f"{exercise[:1].upper()}{exercise[1:]} {variable}"  # ex1 -> "Ex1 d_probs"


def results(report: Report, execution_time: float, hidden_visibility: str = "after_published") -> dict:
    """Gradescope's results.json object for one graded notebook (pure)."""
    tests = []
    for v in report.variables:
        maxdiff = "" if v.maxdiff is None else f", maxdiff {v.maxdiff:.3g}"
        tests.append(
            {
                "name": _test_name(v.exercise, v.name),
                "score": v.points,
                "max_score": v.max_points,
                "status": "passed" if v.points >= v.max_points else "failed",
                "output": v.message or f"{v.name}: {v.status}{maxdiff}",
                "visibility": "visible",
            }
        )
    for i, run in enumerate(report.runs[1:], start=1):
        failing = [
            f"{_test_name(v.exercise, v.name)}: {v.runs[i]}"
            for v in report.variables
            if len(v.runs) > i and v.runs[i] not in PASSING
        ]
        detail = "ran to the end" if run.status == "graded" else "did not run to the end"
        output = f"{run.label} {detail}; " + (
            "every variable was right." if not failing else "not right in this run:\n" + "\n".join(failing)
        )
        tests.append(
            {
                "name": run.label.capitalize(),
                "score": 0.0,
                "max_score": 0.0,
                "status": "passed" if run.status == "graded" and not failing else "failed",
                "output": output,
                "visibility": hidden_visibility,
            }
        )
    summary = f"{report.assignment}: {report.score:g}/{report.max_score:g}"
    if report.status == "failed":
        summary += f"\nThe notebook did not run to the end: {report.error}"
    if report.notes:
        summary += "\n" + "\n".join(f"note: {n}" for n in report.notes)
    return {
        "score": report.score,
        "execution_time": round(execution_time),
        "output": summary[:MAX_OUTPUT],
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def failure(reason: str, execution_time: float) -> dict:
    """results.json for a submission that could not be graded at all: score 0 and why."""
    return {
        "score": 0.0,
        "execution_time": round(execution_time),
        "output": reason[:MAX_OUTPUT],
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [],
    }


def find_notebook(submission: Path, expected: str) -> Path:
    """The submitted notebook: the one named like the release if there is one, else the only one."""
    found = sorted(
        (
            p
            for p in submission.rglob("*.ipynb")
            if not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(submission).parts)
        ),
        key=lambda p: (len(p.parts), str(p)),
    )  # the shallowest first: a zip's folder, not its copies
    if not found:
        raise NotANotebook(f"no notebook (.ipynb) in the submission: upload {expected}")
    named = [p for p in found if p.name == expected]
    if named:
        return named[0]
    if len(found) > 1:
        raise NotANotebook(f"{len(found)} notebooks in the submission and none named {expected}: upload only that one")
    return found[0]


def run(
    submission: Path,
    results_path: Path,
    graded: Assignment,
    hidden_visibility: str = "after_published",
    timeout: float | None = None,
) -> dict:
    """Grade the notebook in `submission` as `graded` and write results.json; return what was written."""
    started = time.monotonic()
    try:
        notebook = find_notebook(submission, graded.rubric.released.name)
        # the zip's own copy of the package, rubric included, sits in the autograder's source folder
        results_folder = results_path.resolve().parent
        hidden = [results_folder.parent / "source"] if results_folder.name == "results" else []
        with sandbox.Pool(hidden) as pool:
            report = grade_notebook(notebook, assignment=graded, timeout=timeout, pool=pool)
        out = results(report, time.monotonic() - started, hidden_visibility)
    except NotANotebook as e:  # the student's upload: still a valid results.json, with the reason
        # (an unknown assignment or a sandbox that cannot start is ours: it fails the autograder instead)
        out = failure(str(e), time.monotonic() - started)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(results_path)
    return out


# --- the autograder zip -----------------------------------------------------------------------------

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, to build the autograder image (choose an Ubuntu base image).
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
TORCH_INDEX_URL="${{TORCH_INDEX_URL-{index}}}"   # empty: the default index

PYTHON=""
for p in python3 python3.13 python3.12 python3.11; do  # the first that runs, is 3.11 or newer and has venv
  if "$p" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON="$p"; break
  fi
done
if [ -z "$PYTHON" ]; then  # Ubuntu 22.04 ships Python 3.10, 24.04 may lack venv; the grader needs 3.11+
  apt-get update
  if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    apt-get install -y python3-venv && PYTHON=python3
  else
    apt-get install -y python3.11 python3.11-venv && PYTHON=python3.11
  fi
fi
"$PYTHON" -m venv "$ROOT/venv"
# PyTorch's CPU build first, at the version the grader was built with (the same kernels, the same `exact`)
if [ -n "$TORCH_INDEX_URL" ]; then
  "$ROOT/venv/bin/pip" install "torch=={torch}" --index-url "$TORCH_INDEX_URL"
else
  "$ROOT/venv/bin/pip" install "torch=={torch}"
fi
"$ROOT/venv/bin/pip" install "$ROOT/source/backprop-grader"
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission; it writes $ROOT/results/results.json.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{GRADER_PYTHON:-$ROOT/venv/bin/python}}"
exec "$PYTHON" -m grader gradescope run "$ROOT/submission" "$ROOT/results/results.json" \\
  --assignment {assignment} --hidden-visibility {visibility}
"""

CARRIED = "assignment"
"""The zip's folder holding a course assignment (an assignment folder: `grader.course.locate_dir`)."""

PYPROJECT = """[build-system]
requires = ["hatchling>=1.24"]
build-backend = "hatchling.build"

[project]
name = "backprop-grader"
version = "{version}"
requires-python = ">=3.11"
dependencies = {dependencies}

[tool.hatch.build.targets.wheel]
packages = ["grader"]
"""


def _carry(graded: Assignment, folder: Path) -> None:
    """Write a course assignment into `folder` as an assignment folder: its rubric, student notebook and data,
    the instructor's private hidden runs, and the solution only where an answer is checked against it (the
    autograder is the instructor's; runs never see the folder, which is hidden like the rubric's)."""
    for relative, path in assignments.folder_files(graded).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / relative)


def _package_tree(dest: Path, graded: Assignment) -> None:
    """Copy the installed `grader` package, with a shipped assignment's release and data, into `dest`."""
    package = Path(__file__).resolve().parents[1]  # the grader package (this module is in its integrations/)
    shutil.copytree(package, dest / "grader", ignore=shutil.ignore_patterns("__pycache__", "_assets"))
    shipped = dest / "grader" / "_assets"
    (shipped / "assignments").mkdir(parents=True)
    shutil.copytree(assets.data_dir(), shipped / "data", ignore=shutil.ignore_patterns("*.py", "*.md", "__pycache__"))
    files = assignments.files(graded)
    # (a course assignment travels beside the package instead: `_carry`)
    for path in (files.released, files.rubric) if graded.location.origin == "shipped" else ():
        shutil.copyfile(path, shipped / "assignments" / path.name)
    if files.solution is not None and graded.location.origin == "shipped":
        # answers whose reference is the instructor's solution: the autograder needs it (runs never see it:
        # the solutions folder is hidden from them like the rubric's)
        (shipped / "solutions").mkdir()
        shutil.copyfile(files.solution, shipped / "solutions" / files.solution.name)
    try:
        dist = importlib.metadata.distribution("backprop-grader")
    except importlib.metadata.PackageNotFoundError:
        raise GraderError("building the autograder needs the package installed: pip install .") from None
    # the runtime dependencies only; torch is installed first by setup.sh, pinned
    needed = [r for r in (dist.requires or []) if "extra ==" not in r]
    (dest / "pyproject.toml").write_text(
        PYPROJECT.format(version=dist.version, dependencies=json.dumps(needed)), encoding="utf-8"
    )


def build(
    graded: Assignment, out: Path, hidden_visibility: str = "after_published", torch_index_url: str = TORCH_CPU_INDEX
) -> Path:
    """Write a Gradescope autograder zip for `graded` (shipped, or a course's, which the zip carries) to `out`."""
    if hidden_visibility not in VISIBILITIES:
        raise UsageError(f"--hidden-visibility must be one of {', '.join(VISIBILITIES)}")
    name = check_name(graded.name)  # (it goes into run_autograder as is)
    if not re.fullmatch(r"[A-Za-z0-9:/._~%+-]*", torch_index_url):  # it goes into setup.sh as is
        raise GraderError(f"not a plain URL: {torch_index_url!r}")
    torch_version = importlib.metadata.version("torch").split("+")[0]
    shipped = graded.location.origin == "shipped"
    with tempfile.TemporaryDirectory(prefix="grader-gradescope-") as tmp:
        root = Path(tmp)
        _package_tree(root / "backprop-grader", graded)
        if not shipped:
            _carry(graded, root / CARRIED / name)
        scripts = {
            "setup.sh": SETUP.format(index=torch_index_url, torch=torch_version),
            "run_autograder": RUN.format(
                assignment=name if shipped else f'"$ROOT/source/{CARRIED}/{name}"', visibility=hidden_visibility
            ),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, text in scripts.items():  # at the root of the zip, executable
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o755) << 16
                zf.writestr(info, text)
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(root).as_posix())
    return out


def unpack(zip_path: Path, source: Path) -> None:
    """Extract an autograder zip as Gradescope does, keeping the scripts executable (for tests and trials)."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(source)
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if mode & 0o111:
                os.chmod(source / info.filename, mode & 0o777)
