"""Gradescope: the autograder zip, run the way Gradescope runs it, in a simulated /autograder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, SOLUTION, grader_command

from grader.integrations import gradescope

VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}
TOP = {
    "score": (int, float),
    "execution_time": int,
    "output": str,
    "visibility": str,
    "stdout_visibility": str,
    "extra_data": dict,
    "tests": list,
    "leaderboard": list,
}
TEST = {
    "score": (int, float),
    "max_score": (int, float),
    "status": str,
    "name": str,
    "name_format": str,
    "number": str,
    "output": str,
    "output_format": str,
    "tags": list,
    "visibility": str,
    "extra_data": dict,
}


def assert_spec_valid(results: dict) -> None:
    """The field names and types of Gradescope's results.json specification."""
    assert set(results) <= set(TOP), set(results) - set(TOP)
    assert "score" in results or all("score" in t for t in results["tests"])
    for key, kind in TOP.items():
        if key in results:
            assert isinstance(results[key], kind), key
    for key in ("visibility", "stdout_visibility"):
        assert results.get(key, "visible") in VISIBILITY
    names = [t["name"] for t in results.get("tests", [])]
    assert len(names) == len(set(names))
    if results.get("tests"):
        assert sum(t["score"] for t in results["tests"]) == results["score"]
    for test in results.get("tests", []):
        assert set(test) <= set(TEST), set(test) - set(TEST)
        assert 0 <= test["score"] <= test["max_score"] or test["max_score"] == 0 == test["score"]
        for key, kind in TEST.items():
            if key in test:
                assert isinstance(test[key], kind), (key, test)
        assert test.get("status", "passed") in ("passed", "failed")
        assert test.get("visibility", "visible") in VISIBILITY


@pytest.fixture(scope="module")
def autograder(tmp_path_factory) -> Path:
    """/autograder as Gradescope lays it out: the zip in source/, run_autograder copied beside it."""
    root = tmp_path_factory.mktemp("autograder")
    zip_path = root / "autograder.zip"
    proc = subprocess.run(
        [*grader_command(), "gradescope", "build", "backprop_ninja", "--out", str(zip_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert {
        "setup.sh",
        "run_autograder",
        "backprop-grader/pyproject.toml",
        "backprop-grader/grader/_assets/assignments/backprop_ninja.ipynb",
    } <= set(names)
    assert not any("solutions" in n or n.endswith(".pyc") for n in names)
    gradescope.unpack(zip_path, root / "source")
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    return root


def _submit(root: Path, notebook: Path | None, python: str | None = sys.executable) -> dict:
    shutil.rmtree(root / "submission", ignore_errors=True)
    shutil.rmtree(root / "results", ignore_errors=True)
    (root / "submission").mkdir()
    if notebook is not None:
        shutil.copyfile(notebook, root / "submission" / notebook.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"AUTOGRADER_ROOT": str(root)}
    if python:  # this environment's interpreter, running the zip's copy of the package
        env |= {"GRADER_PYTHON": python, "PYTHONPATH": str(root / "source" / "backprop-grader")}
    proc = subprocess.run(
        [str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert_spec_valid(results)
    return results


def test_the_solution_earns_every_test(autograder):
    results = _submit(autograder, SOLUTION)
    variables = [t for t in results["tests"] if t["max_score"] > 0]
    assert results["score"] == 36 and len(variables) == 36
    assert all(t["status"] == "passed" and t["visibility"] == "visible" for t in variables)
    assert variables[1]["name"] == "Ex1 d_probs" and variables[1]["output"] == "d_probs: exact, maxdiff 0"
    hidden = [t for t in results["tests"] if t["max_score"] == 0]
    assert [t["name"] for t in hidden] == ["Hidden run 1", "Hidden run 2"]
    assert all(t["visibility"] == "after_published" and t["status"] == "passed" for t in hidden)


def test_a_wrong_gradient_fails_its_own_test_with_the_reason(autograder):
    results = _submit(autograder, NOTEBOOKS / "wrong_d_W2.ipynb")
    assert results["score"] == 35
    failed = [t for t in results["tests"] if t["status"] == "failed"]
    assert [t["name"] for t in failed] == ["Ex1 d_W2", "Hidden run 1", "Hidden run 2"]
    assert failed[1]["output"] == "hidden run 1 ran to the end; not right in this run:\nEx1 d_W2: wrong"
    assert failed[0]["score"] == 0 and failed[0]["output"].startswith(
        "d_W2: it is the right gradient times 1/n (= 1/32)"
    )
    assert sum(t["score"] for t in results["tests"]) == results["score"]


def test_a_notebook_that_kills_its_kernel_still_gets_results(autograder):
    # os._exit(0) in Exercise 2's cell: Exercise 1 had ended, and keeps its 26 points
    results = _submit(autograder, NOTEBOOKS / "exits_process.ipynb")
    assert results["score"] == 26
    assert "The notebook did not run to the end: the notebook's process exited with code 0 in cell" in results["output"]
    ex1 = [t for t in results["tests"] if t["name"].startswith("Ex1 ")]
    assert len(ex1) == 26 and all(t["status"] == "passed" for t in ex1)
    assert all(t["status"] == "failed" for t in results["tests"] if t not in ex1)


def test_no_notebook_and_not_a_notebook_score_zero_with_the_reason(autograder, tmp_path):
    results = _submit(autograder, None)
    assert results["score"] == 0 and results["tests"] == []
    assert results["output"] == "no notebook (.ipynb) in the submission: upload backprop_ninja.ipynb"
    broken = tmp_path / "backprop_ninja.ipynb"
    broken.write_text("{ this is not json")
    results = _submit(autograder, broken)
    assert results["score"] == 0 and "not a Jupyter notebook" in results["output"]


@pytest.mark.slow
def test_setup_sh_installs_a_working_autograder(autograder):
    # Gradescope's image build: setup.sh makes its own virtual environment (torch from the default index
    # here, as this machine cannot reach PyTorch's), then run_autograder uses that environment alone.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "AUTOGRADER_ROOT": str(autograder),
        "TORCH_INDEX_URL": "",
        "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)),
    }
    proc = subprocess.run(
        ["bash", str(autograder / "source" / "setup.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = _submit(autograder, NOTEBOOKS / "wrong_d_W2.ipynb", python=None)
    assert results["score"] == 35
