"""`grader grade`: a whole class, found in the layouts instructors get, graded without losing a grade."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, grader_command

from grader import assignment as assignments
from grader import batch, submissions

RUBRIC = assignments.rubric_of("backprop_ninja")
NB = NOTEBOOKS / "full_marks.ipynb"


def test_discover_reads_every_layout_and_reports_duplicates(tmp_path):
    nbgrader = tmp_path / "course" / "submitted"
    for student in ("alice", "bob"):
        (nbgrader / student / "backprop_ninja").mkdir(parents=True)
        shutil.copyfile(NB, nbgrader / student / "backprop_ninja" / "backprop_ninja.ipynb")
    (nbgrader / "bob" / "backprop_ninja" / ".ipynb_checkpoints").mkdir()
    shutil.copyfile(NB, nbgrader / "bob" / "backprop_ninja" / ".ipynb_checkpoints" / "backprop_ninja.ipynb")
    lms = tmp_path / "canvas.zip"
    with zipfile.ZipFile(lms, "w") as zf:
        zf.write(NB, "smithjohn_12345_67890_backprop_ninja.ipynb")
        zf.write(NB, "doejane_LATE_2222_3333_hw.ipynb")
        zf.write(NB, "__MACOSX/._smithjohn_12345_67890_backprop_ninja.ipynb")
        zf.write(NB, "../escape.ipynb")
        zf.writestr("readme.txt", "not a notebook")
    single = tmp_path / "carol.ipynb"
    shutil.copyfile(NB, single)
    again = tmp_path / "elsewhere" / "alice.ipynb"  # a second notebook for alice
    again.parent.mkdir()
    shutil.copyfile(NB, again)
    empty = tmp_path / "empty"
    empty.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    found = submissions.discover([nbgrader, lms, single, again, empty, tmp_path / "missing"], "backprop_ninja", scratch)
    assert [s.student for s in found.submissions] == ["alice", "bob", "carol", "doejane", "smithjohn"]
    assert all(s.path.is_file() and len(s.digest) == 64 for s in found.submissions)
    assert all(scratch in s.path.parents for s in found.submissions if s.student in ("doejane", "smithjohn"))
    assert not (tmp_path / "escape.ipynb").exists() and not (scratch.parent / "escape.ipynb").exists()
    assert len(found.problems) == 3
    assert found.problems[0].endswith("empty: no notebook (.ipynb) in it")
    assert found.problems[1].endswith("missing: no such file or folder")
    assert found.problems[2].startswith("alice: 2 notebooks (") and "graded" in found.problems[2]


def _report(student: str, points: dict[str, float], status: str = "graded") -> dict:
    variables = [
        {
            "exercise": ex.id,
            "name": v.name,
            "points": points.get(v.name, v.points),
            "max_points": v.points,
            "status": "exact" if points.get(v.name, v.points) else "wrong",
            "message": "" if points.get(v.name, 1) else f"{v.name}: off",
        }
        for ex in RUBRIC.exercises
        for v in ex.graded
    ]
    score = sum(v["points"] for v in variables)
    return {
        "student": student,
        "assignment": "backprop_ninja",
        "status": status,
        "error": "",
        "score": score,
        "max_score": RUBRIC.max_score,
        "exercises": [
            {
                "id": ex.id,
                "score": sum(v["points"] for v in variables if v["exercise"] == ex.id),
                "max_score": ex.max_score,
            }
            for ex in RUBRIC.exercises
        ],
        "variables": variables,
        "notes": [],
    }


def test_gradebook_summary_and_feedback_from_reports():
    reports = [_report("zed", {}), _report("amy", {"d_W2": 0.0, "d_b2": 0.0})]  # Exercises 1 and 4 both lose them
    rows = list(csv.reader(io.StringIO(batch.gradebook_csv(RUBRIC, reports))))
    assert rows[0][:4] == ["student", "status", "score", "max_score"] and rows[0][4] == "ex1:d_logprobs"
    assert [r[0] for r in rows[1:]] == ["amy", "zed"]
    assert rows[1][rows[0].index("ex1:d_W2")] == "0" and rows[2][rows[0].index("ex1:d_W2")] == "1"
    summary = batch.summarize(RUBRIC, reports)
    shares = dict(summary.right)
    assert shares["ex1:d_W2"] == 0.5 and shares["ex1:d_probs"] == 1.0
    text = batch.summary_text(summary, ["alice: 2 notebooks"])
    assert "hardest first:\n  ex1:d_W2" in text and text.endswith("note: alice: 2 notebooks")
    page = batch.feedback_markdown(reports[1])
    assert "- `d_W2` (wrong): d_W2: off" in page and "Every gradient is right." in page


def _grade(out: Path, *inputs: Path, jobs: int = 2, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [
        *grader_command(),
        "grade",
        *map(str, inputs),
        "--assignment",
        "backprop_ninja",
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--timeout",
        "30",
    ]
    if kwargs.get("background"):
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def classroom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("class")
    for name in ("full_marks", "wrong_d_W2", "exits_process", "half_done", "keepdim_d_b2"):
        shutil.copyfile(NOTEBOOKS / f"{name}.ipynb", folder / f"{name}.ipynb")
    (folder / "not_json.ipynb").write_text("{ this is not json")
    return folder


@pytest.mark.slow
def test_a_batch_grades_everyone_and_a_killed_batch_resumes_to_the_same_gradebook(classroom, tmp_path):
    whole = _grade(tmp_path / "whole", classroom)
    assert whole.returncode == 0, whole.stderr
    rows = {r["student"]: r for r in csv.DictReader(io.StringIO((tmp_path / "whole" / "grades.csv").read_text()))}
    assert {k: (r["status"], r["score"]) for k, r in rows.items()} == {
        # os._exit(0) in Exercise 2: the run failed, and Exercise 1, which had ended, keeps its 26 points
        "exits_process": ("failed", "26"),
        "full_marks": ("graded", "36"),
        "half_done": ("graded", "8"),
        "keepdim_d_b2": ("graded", "35"),
        "not_json": ("failed", "0"),
        "wrong_d_W2": ("graded", "35"),
    }
    assert "not a Jupyter notebook" in rows["not_json"]["error"]
    report = json.loads((tmp_path / "whole" / "reports" / "wrong_d_W2.json").read_text())
    assert report["student"] == "wrong_d_W2" and len(report["sha256"]) == 64 and report["score"] == 35
    assert (tmp_path / "whole" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "d_W2" in (tmp_path / "whole" / "feedback" / "wrong_d_W2.md").read_text()
    page = (tmp_path / "whole" / "feedback" / "wrong_d_W2.html").read_text()
    assert "d_W2: it is the right gradient times 1/n" in page and "data:image/png;base64," in page

    # kill a batch with SIGKILL as soon as its first report is on disk, then run it again
    out = tmp_path / "killed"
    proc = _grade(out, classroom, jobs=1, background=True)
    deadline = time.monotonic() + 300
    while not list((out / "reports").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(list((out / "reports").glob("*.json")))
    assert 1 <= kept < 6 and not (out / "grades.csv").exists()
    again = _grade(out, classroom)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("(kept)") == kept
    assert (out / "grades.csv").read_text() == (tmp_path / "whole" / "grades.csv").read_text()
    assert not list((out / "reports").glob(".*"))  # no half-written report left behind

    # a third run grades nothing; --force grades everything again
    third = _grade(out, classroom)
    assert third.stderr.count("(kept)") == 6
