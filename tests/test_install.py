"""A plain (non-editable) install into a fresh virtual environment grades from any directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SOLUTION


@pytest.mark.slow
def test_non_editable_install_grades_a_notebook_from_an_unrelated_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"
    # the README's install, minus -e and the test extra
    subprocess.run([str(bin_ / "pip"), "install", "-q", "torch==2.13.0", str(ROOT)], check=True, timeout=1800)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(SOLUTION, elsewhere / "my homework.ipynb")
    located = subprocess.run(
        [
            str(bin_ / "python"),
            "-c",
            "import grader, grader.assets as a; print(grader.__file__); print(a.assignments_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        check=True,
    ).stdout.split()
    assert str(venv) in located[0] and located[1].endswith("grader/_assets/assignments")

    proc = subprocess.run(
        [str(bin_ / "grader"), "check", "my homework.ipynb", "--json"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "graded" and report["score"] == report["max_score"] == 36

    # What the wheel carries besides code: the page templates (grader/reports/templates/) for --html, and the
    # lecture's rubric and notebook (grader/lecture/data/) for a notebook of the lecture's own
    page = subprocess.run(
        [str(bin_ / "grader"), "check", "my homework.ipynb", "--html", "page.html"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=300,
    )
    assert page.returncode == 0, page.stderr
    assert "<title>backprop_ninja: 36/36</title>" in (elsewhere / "page.html").read_text(encoding="utf-8")
    shutil.copy(ROOT / "tests" / "notebooks" / "lecture" / "equivalent_forward.ipynb", elsewhere / "lecture.ipynb")
    lecture = subprocess.run(
        [str(bin_ / "grader"), "check", "lecture.ipynb", "--json"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=300,
    )
    assert lecture.returncode == 0, lecture.stderr
    assert json.loads(lecture.stdout)["assignment"] == "lecture"
