"""A batch of honest and hostile submissions: every honest grade holds, every attack ends in a 0 and a
reason, and nothing outside the runs changes.

Each hostile notebook is the released assignment with the attack written into the Exercise 1 answer
cell, the way a student would; a few attack from an otherwise perfect notebook, so that a 0 can only
come from the attack being stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOKS, RELEASE, ROOT, SOLUTION, grader_command
from grader import _confine

RUBRIC_FILE = ROOT / "assignments" / "backprop_ninja.toml"
CONFINED = _confine.available()


def _with_answer(base: Path, code: str, out: Path) -> None:
    """`base` with `code` put in front of the Exercise 1 answer."""
    nb = nbformat.read(str(base), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    cell.source = code + "\n" + cell.source
    nbformat.write(nb, str(out))


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# name -> (base notebook, code of the attack, a phrase the row's reason must contain, or a tuple of them)
ATTACKS = {
    "infinite_loop": (SOLUTION, "while True:\n    pass", "timed out after 10 s in cell"),
    "memory_bomb": (RELEASE, "hog = torch.ones(2**31)  # 8 GiB", "d_logprobs was not computed"),
    # its processes fork for as long as any of them can: the notebook runs out of time, or its fork fails
    "fork_bomb": (RELEASE, "import os\nwhile True:\n    os.fork()", ("BlockingIOError", "timed out after 10 s")),
    "gigabyte_of_output": (SOLUTION, "line = 'x' * 1023\nfor _ in range(2**20):\n    print(line)", "wrote more than"),
    "exits_quietly": (SOLUTION, "import os\nos._exit(0)", "exited with code 0"),
    "kills_its_parent": (RELEASE, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "PermissionError"),
    "writes_solutions": (RELEASE, f"open({str(SOLUTION)!r}, 'w').write('{{}}')", "d_logprobs was not computed"),
    "reads_rubric": (RELEASE, f"print(open({str(RUBRIC_FILE)!r}).read())", "d_logprobs was not computed"),
    "opens_socket": (RELEASE, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
                     "d_logprobs was not computed"),
}
HONEST = {"full_marks": 36, "wrong_d_W2": 35, "half_done": 8}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, dict[str, dict], subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("out")
    for name in HONEST:
        shutil.copyfile(NOTEBOOKS / f"{name}.ipynb", folder / f"{name}.ipynb")
    for name, (base, code, _) in ATTACKS.items():
        _with_answer(base, code, folder / f"{name}.ipynb")
    # reads another student's notebook and writes into the grader's output folder
    spy = f"print(open({str(folder / 'full_marks.ipynb')!r}).read()[:100])\n" \
          f"open({str(out / 'grades.csv')!r}, 'w').write('spy,36')"
    _with_answer(RELEASE, spy, folder / "spies.ipynb")
    (folder / "not_json.ipynb").write_text("{ this is not json")
    before = _fingerprint(ROOT / "solutions") | _fingerprint(ROOT / "assignments")
    result = subprocess.run([*grader_command(), "grade", str(folder), "--assignment", "backprop_ninja", "--out",
                             str(out), "--jobs", "2", "--timeout", "10"], capture_output=True, text=True, timeout=600)
    assert _fingerprint(ROOT / "solutions") | _fingerprint(ROOT / "assignments") == before
    rows = {r["student"]: r for r in csv.DictReader(io.StringIO((out / "grades.csv").read_text()))}
    return out, rows, result


def test_the_batch_finishes_and_grades_everyone(batch):
    out, rows, result = batch
    assert result.returncode == 0, result.stderr
    assert set(rows) == {*HONEST, *ATTACKS, "spies", "not_json"}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_grades_hold(batch, name):
    _, rows, _ = batch
    assert (rows[name]["status"], rows[name]["score"]) == ("graded", str(HONEST[name]))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_scores_zero_with_a_reason(batch, name):
    out, rows, _ = batch
    if not CONFINED and name in ("fork_bomb", "writes_solutions", "reads_rubric", "opens_socket"):
        pytest.skip("needs the Linux namespaces (root): see the README's guarantees")
    report = json.loads((out / "reports" / f"{name}.json").read_text())
    assert rows[name]["score"] == "0"
    reasons = " ".join([report["error"], *(v["message"] for v in report["variables"]), *report["notes"]])
    expected = ATTACKS[name][2]
    assert any(phrase in reasons for phrase in ((expected,) if isinstance(expected, str) else expected)), reasons


@pytest.mark.skipif(not CONFINED, reason="needs the Linux namespaces (root)")
def test_what_the_attacks_ran_into(batch):
    out, rows, _ = batch
    notes = {name: " ".join(json.loads((out / "reports" / f"{name}.json").read_text())["notes"])
             for name in ("writes_solutions", "reads_rubric", "opens_socket", "spies", "memory_bomb")}
    assert "Read-only file system" in notes["writes_solutions"]
    assert "FileNotFoundError" in notes["reads_rubric"]
    assert "Network is unreachable" in notes["opens_socket"]
    assert "raised" in notes["spies"] and rows["spies"]["score"] == "0"
    assert "memory" in notes["memory_bomb"]
    assert rows["not_json"]["status"] == "failed" and "not a Jupyter notebook" in rows["not_json"]["error"]


@pytest.mark.skipif(not CONFINED, reason="needs the Linux namespaces (root)")
def test_nothing_is_left_running(batch):
    # A run's uid is UID_BASE + its supervisor's pid. A process of such a uid whose supervisor is gone was
    # left behind; one whose supervisor is alive belongs to a grading still going on (another grader on
    # this machine), not to this finished batch.
    confined = [p for p in os.listdir("/proc") if p.isdigit() and _owner(p) >= _confine.UID_BASE]
    left = [p for p in confined if not os.path.exists(f"/proc/{_owner(p) - _confine.UID_BASE}")]
    assert left == []


def _owner(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1
