"""Contracts of the repository: solutions earn full marks, releases earn zero, both stay in step."""

from __future__ import annotations

import json
import re
import subprocess

import nbformat
import pytest
from conftest import LECTURE_NAMES, RELEASE, ROOT, SOLUTION, grader_command

from grader import assignment as assignments
from grader import notebook
from grader.assignment import released_parameters

RUBRIC = assignments.rubric_of("backprop_ninja")


def _check_json(path) -> tuple[int, dict]:
    proc = subprocess.run(
        [*grader_command(), "check", str(path), "--json"], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


def test_solution_earns_full_marks_with_every_ex1_gradient_exact():
    code, report = _check_json(SOLUTION)
    assert code == 0
    assert report["status"] == "graded" and report["score"] == report["max_score"] == 36
    ex1 = [v for v in report["variables"] if v["exercise"] == "ex1"]
    assert len(ex1) == 26 and all(v["status"] == "exact" and v["maxdiff"] == 0.0 for v in ex1)
    assert [e["score"] for e in report["exercises"]] == [26, 1, 1, 8]
    assert all(
        v["runs"] == [v["status"]] * 3 or set(v["runs"]) <= {"exact", "approximate"} for v in report["variables"]
    )


def test_untouched_release_earns_zero_with_every_variable_missing():
    code, report = _check_json(RELEASE)
    assert code == 0
    assert report["status"] == "graded" and report["error"] == "" and report["score"] == 0
    assert len(report["variables"]) == 36
    assert {v["status"] for v in report["variables"]} == {"missing"}
    loss = next(
        v for v in report["variables"] if v["name"] == "loss"
    )  # not the training loop's error on the stub's None
    assert loss["message"] == "loss: `backward` returns None: write Exercise 4 first"
    assert set(report) == {
        "assignment",
        "notebook",
        "status",
        "error",
        "score",
        "max_score",
        "exercises",
        "variables",
        "notes",
        "runs",
        "peak_memory_mb",
        "saved_checks",
    }
    assert set(report["variables"][0]) == {
        "exercise",
        "name",
        "of",
        "status",
        "exact",
        "approximate",
        "maxdiff",
        "points",
        "max_points",
        "message",
        "runs",
        "local_status",
        "hint",
    }
    assert set(report["exercises"][0]) == {"id", "score", "max_score", "root_cause"}
    assert [r["label"] for r in report["runs"]] == ["the notebook's parameters", "hidden run 1", "hidden run 2"]


def test_release_is_clean_and_stubs_every_variable():
    nb = nbformat.read(RELEASE, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "BEGIN SOLUTION" not in cell.source
    answers = {notebook.grade_id(c): c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}
    for ex in RUBRIC.exercises:
        stubs = re.findall(r"^\s*(d_\w+) = None$", answers[ex.cell], re.M)
        assert stubs == [v.name for v in ex.variables]


def test_rubric_names_cells_that_exist_with_the_right_roles():
    nb = nbformat.read(RELEASE, as_version=4)
    cells = {notebook.grade_id(c): c for c in nb.cells if notebook.grade_id(c)}
    function_cells = tuple(g for ex in RUBRIC.exercises if ex.function for g in ex.function.reference_cells)
    for gid in RUBRIC.setup_cells + RUBRIC.reference_cells + RUBRIC.no_grad_cells + RUBRIC.skip_cells + function_cells:
        assert notebook.is_locked(cells[gid]), gid
    for ex in RUBRIC.exercises:
        meta = cells[ex.cell].metadata["nbgrader"]
        assert meta["solution"] and not meta["locked"] and meta["schema_version"] == 3
    assert nb.metadata["grader"]["assignment"] == "backprop_ninja"


def test_parameters_cell_holds_the_documented_defaults():
    params = released_parameters(nbformat.read(RELEASE, as_version=4))
    assert params == {
        "seed": 2147483647,
        "batch_size": 32,
        "n_embd": 10,
        "n_hidden": 64,
        "data_path": None,
        "ex4_n_hidden": 200,
        "max_steps": 200000,
    }


def test_names_txt_is_the_documented_data_set():
    lines = (ROOT / "data" / "names.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 32_469 and all(re.fullmatch(r"[a-z]+", w) for w in lines)
    assert lines[:3] == ["emma", "olivia", "ava"]


@pytest.mark.skipif(not LECTURE_NAMES.exists(), reason="the lecture's names.txt is not in ../shared/reference")
def test_setup_reproduces_the_lecture_splits_with_the_lecture_data():
    nb = nbformat.read(RELEASE, as_version=4)
    setup = next(c.source for c in nb.cells if notebook.grade_id(c) == "setup")
    ns: dict = {"data_path": str(LECTURE_NAMES)}
    exec(setup, ns)
    assert len(ns["words"]) == 32_033
    # the lecture's numbers for block_size 3 and random.seed(42)
    assert (len(ns["Xtr"]), len(ns["Xdev"]), len(ns["Xte"])) == (182_625, 22_655, 22_866)
