"""The `grader` command through its real entry point: exit codes and one-line messages."""

from __future__ import annotations

import json
import subprocess

import nbformat
from conftest import NOTEBOOKS, SOLUTION, grader_command


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*grader_command(), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("check").returncode == 2
    assert run("check", str(SOLUTION), "--timeout", "-3").returncode == 2
    assert run("frobnicate").returncode == 2


def test_help_exits_0():
    proc = run("check", "--help")
    assert proc.returncode == 0 and "--timeout" in proc.stdout


def test_missing_file_is_one_line_and_exit_1(tmp_path):
    proc = run("check", str(tmp_path / "nope.ipynb"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"grader: {tmp_path / 'nope.ipynb'}: no such file"]


def test_grading_a_class_from_a_path_that_is_not_there_is_one_line_and_exit_1(tmp_path):
    # (it used to grade nobody and exit 0, which a script cannot tell from an empty class)
    proc = run("grade", str(tmp_path / "submitted"), "--assignment", "backprop_ninja", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"grader: {tmp_path / 'submitted'}: no such file or folder"]


def test_a_file_that_is_not_a_notebook_exits_1(tmp_path):
    bad = tmp_path / "homework.ipynb"
    bad.write_text("print('hello')\n")
    proc = run("check", str(bad))
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a Jupyter notebook" in proc.stderr


def test_a_notebook_of_no_known_assignment_exits_1(tmp_path):
    plain = tmp_path / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), plain)
    proc = run("check", str(plain))
    assert proc.returncode == 1 and "--assignment" in proc.stderr
    proc = run("check", str(plain), "--assignment", "nonesuch")
    assert (
        proc.returncode == 1
        and "unknown assignment 'nonesuch' (known: activations_batchnorm, backprop_ninja, leaky_abstractions, wavenet)"
        in proc.stderr
    )


def test_renamed_notebook_without_metadata_grades_with_assignment_flag(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "wrong_d_W2.ipynb", as_version=4)
    del nb.metadata["grader"]
    path = tmp_path / "Copy of backprop (1).ipynb"
    nbformat.write(nb, path)
    proc = run("check", str(path), "--assignment", "backprop_ninja", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["score"] == 35


def test_table_from_an_unrelated_directory(tmp_path):
    proc = run("check", str(NOTEBOOKS / "keepdim_d_b2.ipynb"), cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert "Exercise ex1: 25/26" in lines and lines[-1] == "Total: 35/36"
    b2 = next(ln for ln in lines if ln.strip().startswith("b2 "))
    assert "0/1" in b2 and "shape (1, 27), expected (27,)" in b2
    assert any(
        ln.strip().startswith("logprobs        | exact: True  | approximate: True  | maxdiff: 0") for ln in lines
    )


def test_python_dash_m_grader_works_too():
    import sys

    proc = subprocess.run([sys.executable, "-m", "grader", "check", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0


def test_usage_errors_exit_2_with_one_line(tmp_path):
    for args in (
        ["check", str(SOLUTION), "--hidden-runs", str(tmp_path / "missing.toml")],
        ["check", str(SOLUTION), "--data", str(tmp_path / "names.txt")],
    ):
        proc = run(*args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert proc.stderr.startswith("grader: ")


def test_a_class_of_lecture_notebooks_is_a_usage_error_not_a_traceback(tmp_path):
    # the lecture's notebooks are checked one at a time; `grade`, `gradescope` and `classroom` need an assignment
    (tmp_path / "submitted").mkdir()
    result = run("grade", str(tmp_path / "submitted"), "--assignment", "lecture", "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "lecture notebooks are checked one at a time" in result.stderr
    assert "Traceback" not in result.stderr
