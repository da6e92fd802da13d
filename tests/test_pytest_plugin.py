"""Issue 10: grades as pytest results (the plugin), JUnit XML, and GitHub Classroom's workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import NOTEBOOKS, RELEASE, ROOT, SOLUTION, grader_command, user_pytest

xmlschema = pytest.importorskip("xmlschema")
SCHEMA = Path(__file__).parent / "junit.xsd"


def _pytest(cwd: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """pytest as a user runs it, in a folder of their own (not this repository's test configuration)."""
    return user_pytest(cwd, *args, python=python)


def _cases(xml_path: Path) -> dict[str, ET.Element]:
    # `<notebook>.<exercise>` and the variable -> `<exercise>::<variable>`
    return {
        f"{c.get('classname').rsplit('.', 1)[-1]}::{c.get('name')}": c
        for c in ET.parse(xml_path).getroot().iter("testcase")
    }


def _two_wrong(tmp_path: Path) -> Path:
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    ex1 = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    for old, new in [
        ("d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits / n"),
        ("d_bnbias = d_hpreact.sum(0, keepdim=True)", "d_bnbias = -d_hpreact.sum(0, keepdim=True)"),
    ]:
        assert ex1.source.count(old) == 1, old
        ex1.source = ex1.source.replace(old, new)
    path = tmp_path / "two wrong.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_solution_passes_every_item(tmp_path):
    proc = _pytest(tmp_path, "--grade", str(SOLUTION), "-q")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "38 passed" in proc.stdout  # 36 variables and 2 hidden runs


def test_the_untouched_release_fails_every_variable_with_its_reason(tmp_path):
    proc = _pytest(tmp_path, "--grade", str(RELEASE), "--grade-no-runs", f"--junitxml={tmp_path / 'r.xml'}")
    assert proc.returncode == 1
    cases = _cases(tmp_path / "r.xml")
    assert len(cases) == 36 and all(c.find("failure") is not None for c in cases.values())
    messages = {k: c.find("failure").get("message") for k, c in cases.items()}
    assert all(m.startswith("missing: ") for m in messages.values()), messages
    assert messages["ex4::loss"] == "missing: loss: `backward` returns None: write Exercise 4 first"
    assert "Traceback" not in proc.stdout and "grader/" not in proc.stdout  # no internals of the plugin


def test_two_wrong_gradients_fail_exactly_with_their_hints(tmp_path):
    proc = _pytest(tmp_path, "--grade", str(_two_wrong(tmp_path)), f"--junitxml={tmp_path / 'r.xml'}")
    assert proc.returncode == 1
    failed = {
        k: c.find("failure").get("message")
        for k, c in _cases(tmp_path / "r.xml").items()
        if c.find("failure") is not None
    }
    assert set(failed) == {"ex1::d_W2", "ex1::d_bnbias"}, failed
    assert "times 1/n (= 1/32)" in failed["ex1::d_W2"] and "the sign is flipped" in failed["ex1::d_bnbias"]
    # the failure text is the verdict, not a traceback
    assert "wrong: d_W2: it is the right gradient times 1/n" in proc.stdout and "Traceback" not in proc.stdout


def test_pytest_machinery_works_unchanged(tmp_path):
    notebook = str(_two_wrong(tmp_path))
    selected = _pytest(tmp_path, "--grade", notebook, "-k", "d_W", "-q")
    assert "1 failed, 3 passed, 34 deselected" in selected.stdout, selected.stdout[-500:]  # d_W1, d_W2 in ex1 and ex4
    first = _pytest(tmp_path, "--grade", notebook, "-x", "-q")
    assert "1 failed" in first.stdout and "stopping after 1 failures" in first.stdout
    listed = _pytest(tmp_path, "--grade", notebook, "--collect-only", "-q")
    assert (
        "ex1::d_probs" in listed.stdout and "hidden::run-2" in listed.stdout and "38 tests collected" in listed.stdout
    )


def test_usage_mistakes_are_usage_errors(tmp_path):
    missing = _pytest(tmp_path, "--grade", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 4 and "ERROR: --grade: " in missing.stderr and "no such file" in missing.stderr
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), plain)
    unknown = _pytest(tmp_path, "--grade", str(plain))
    assert unknown.returncode == 4 and "--assignment" in unknown.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr


def test_a_notebook_whose_cell_hangs_fails_what_it_did_not_compute_with_one_line(tmp_path):
    # an endless loop after Exercise 1's eighth line: interrupted after 1.5 s (half the run's 3 s); the run goes on
    _pytest(
        tmp_path,
        "--grade",
        str(NOTEBOOKS / "infinite_loop.ipynb"),
        "--grade-timeout",
        "3",
        "--grade-no-runs",
        f"--junitxml={tmp_path / 'r.xml'}",
    )
    cases = _cases(tmp_path / "r.xml")
    messages = [c.find("failure").get("message") for c in cases.values() if c.find("failure") is not None]
    assert (
        len(cases) == 36 and len(messages) == 19
    )  # 18 of Exercise 1, and Exercise 3 (it reads Exercise 1's d_hpreact)
    assert all(m and "\n" not in m for m in messages)
    assert sum("interrupted after 1.5 s" in m for m in messages) == 18


def test_junit_xml_from_both_paths_validates_with_points_as_properties(tmp_path):
    notebook = _two_wrong(tmp_path)
    _pytest(tmp_path, "--grade", str(notebook), f"--junitxml={tmp_path / 'pytest.xml'}")
    proc = subprocess.run(
        [*grader_command(), "check", str(notebook), "--junit", str(tmp_path / "grader.xml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    schema = xmlschema.XMLSchema(str(SCHEMA))
    for name in ("pytest.xml", "grader.xml"):
        schema.validate(str(tmp_path / name))
        cases = _cases(tmp_path / name)
        assert len(cases) == 38
        points = {k: {p.get("name"): p.get("value") for p in c.iter("property")} for k, c in cases.items()}
        assert points["ex1::d_W2"] == {"points": "0", "max_points": "1", "status": "wrong"}
        assert points["ex4::d_C"]["points"] == "1"
        assert {k for k, c in cases.items() if c.find("failure") is not None} == {"ex1::d_W2", "ex1::d_bnbias"}
    # ... and the schema is not one that anything passes
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites><testsuite name='x'><testcase name='y'/></testsuite></testsuites>", encoding="utf-8")
    assert not schema.is_valid(str(broken))


def _classroom_repository(tmp_path: Path, notebook: Path, package: str) -> Path:
    repo = tmp_path / "student-repo"
    proc = subprocess.run(
        [*grader_command(), "classroom", "backprop_ninja", "--out", str(repo), "--package", package],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    shutil.copy(notebook, repo / "backprop_ninja.ipynb")
    return repo


def _classroom_score(repo: Path, python: str) -> float:
    """What GitHub Classroom's Python grader awards: max-score x passed / total, pytest run its way."""
    workflow = yaml.safe_load((repo / ".github" / "workflows" / "classroom.yml").read_text(encoding="utf-8"))
    step = next(
        s
        for s in workflow["jobs"]["run-autograding-tests"]["steps"]
        if s.get("uses", "").startswith("classroom-resources/autograding-python-grader")
    )
    tests = [str(p) for p in repo.rglob("*_test.py")]  # the files it runs
    proc = _pytest(repo, "-s", "--tb=no", f"--junitxml={repo / 'results.xml'}", *tests, python=python)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = _cases(repo / "results.xml")
    passed = sum(c.find("failure") is None and c.find("error") is None for c in cases.values())
    return float(step["with"]["max-score"]) * passed / len(cases)


def test_the_classroom_template_scores_as_grader_check(tmp_path):
    notebook = _two_wrong(tmp_path)
    repo = _classroom_repository(tmp_path, notebook, "backprop-grader")
    check = json.loads(
        subprocess.run(
            [*grader_command(), "check", str(notebook), "--json"], capture_output=True, text=True, timeout=300
        ).stdout
    )
    assert _classroom_score(repo, sys.executable) == check["score"] == 34


@pytest.mark.slow
def test_the_classroom_workflow_commands_in_a_fresh_virtual_environment(tmp_path):
    """The workflow's setup command, then pytest as the Python grader runs it, in a fresh environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    notebook = _two_wrong(tmp_path)
    # (the Python grader brings its own pytest; a bare virtual environment needs one)
    repo = _classroom_repository(tmp_path, notebook, f"{ROOT} pytest")
    workflow = yaml.safe_load((repo / ".github" / "workflows" / "classroom.yml").read_text(encoding="utf-8"))
    step = next(s for s in workflow["jobs"]["run-autograding-tests"]["steps"] if "setup-command" in s.get("with", {}))
    # (here pip's own configuration serves PyTorch's CPU build: no index URL)
    env = os.environ | {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "TORCH_INDEX_URL": ""}
    setup = subprocess.run(
        step["with"]["setup-command"], shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=1800
    )
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    score = _classroom_score(repo, str(venv / "bin" / "python"))
    check = json.loads(
        subprocess.run(
            [str(venv / "bin" / "grader"), "check", str(notebook), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    )
    assert score == check["score"] == 34
