"""An instructor writes an assignment of their own from the docs alone: docs/authoring.md's commands, word for
word, in a fresh virtual environment with the wheel installed (no checkout), in a course folder outside it;
then the Gradescope zip grades it in an environment of its own, and so does the Classroom template."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, answered_in_course

from grader import rubric_reference
from grader.integrations import gradescope

WALKTHROUGH = ROOT / "docs" / "authoring.md"
NAME = "sigmoid_layer"


def commands() -> list[str]:
    """The walkthrough's commands: each `$ ` line of its console blocks, in order."""
    text = WALKTHROUGH.read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_rubric_reference_is_generated_from_the_rubrics_own_keys():
    assert (ROOT / "docs" / "rubric.md").read_text(encoding="utf-8") == rubric_reference.page(), (
        "docs/rubric.md is stale: python -m grader.rubric_reference > docs/rubric.md"
    )


def test_the_walkthrough_starts_from_an_install_and_ends_on_gradescope():
    steps = commands()
    assert steps[0].startswith("python3 -m venv") and any("pip install" in s for s in steps)
    assert steps[-1].startswith(f"grader gradescope build {NAME}")
    assert any(s.startswith(f"grader validate {NAME}") for s in steps)


def _wheel(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    return next(out.glob("backprop_grader-*.whl"))


def _shell(command: str, cwd: Path, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f". grader-env/bin/activate && {command}" if "venv" not in command else command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _answered(course: Path, old: str = "", new: str = "") -> nbformat.NotebookNode:
    return answered_in_course(course, NAME, old, new)


@pytest.mark.slow
def test_an_instructor_follows_the_walkthrough_from_a_wheel_to_gradescope(tmp_path):
    wheel = _wheel(tmp_path)
    home = tmp_path / "instructor"  # outside the checkout; nothing of it on the path
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GRADER_COURSE")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    outputs: list[tuple[str, str]] = []
    for command in commands():
        run = command
        # this machine reaches PyPI only: PyTorch's CPU build is on its disk, and the package is the wheel
        run = run.replace(" --index-url https://download.pytorch.org/whl/cpu", "")
        run = run.replace('"backprop-grader[nbgrader]"', f'"{wheel}[nbgrader]"')
        proc = _shell(run, home, env)
        assert proc.returncode == 0, f"$ {command}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        outputs.append((command, proc.stdout))
    course = home / "my-course"
    grader_file = _shell("python -c 'import grader; print(grader.__file__)'", home, env).stdout
    assert str(home / "grader-env") in grader_file  # the wheel's copy, not the checkout's

    # the edit took: the forward pass is a sigmoid, and the validated assignment grades it
    validated = [out for cmd, out in outputs if cmd.startswith(f"grader validate {NAME}")]
    assert len(validated) == 2 and all(f"{NAME}: ok" in out for out in validated)
    assert "torch.sigmoid(h)" in (course / "release" / NAME / f"{NAME}.ipynb").read_text(encoding="utf-8")
    checks = [out for cmd, out in outputs if cmd.startswith("grader check")]
    assert "Total: 5/5" in checks[0] and "Total: 0/5" in checks[1]

    # one mistake costs one variable
    (home / "mistake").mkdir()
    nbformat.write(_answered(course, "d_W = x.T @ d_h", "d_W = d_h.T @ x"), home / "mistake" / f"{NAME}.ipynb")
    proc = _shell(f"grader check mistake/{NAME}.ipynb --course my-course --json", home, env)
    report = json.loads(proc.stdout)
    assert [v["name"] for v in report["variables"] if v["points"] < v["max_points"]] == ["d_W"]

    # Gradescope: the zip builds its own environment (setup.sh) and grades with it alone
    root = tmp_path / "autograder"
    gradescope.unpack(home / f"{NAME}.zip", root / "source")
    assert not (root / "source" / "assignment" / NAME / "solution").exists()  # (no values exercise reads it)
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    scope = env | {"AUTOGRADER_ROOT": str(root), "TORCH_INDEX_URL": ""}
    proc = subprocess.run(
        ["bash", str(root / "source" / "setup.sh")], env=scope, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for notebook, score in ((_answered(course), 5), (_answered(course, "d_b = d_h.sum(0)", "d_b = d_h.sum(1)"), 4)):
        shutil.rmtree(root / "submission", ignore_errors=True)
        (root / "submission").mkdir()
        nbformat.write(notebook, root / "submission" / f"{NAME}.ipynb")
        proc = subprocess.run(
            [str(root / "run_autograder")], cwd=root, env=scope, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((root / "results" / "results.json").read_text())["score"] == score

    # GitHub Classroom: the template's own commands (its setup, then pytest) in a fresh environment
    repo = tmp_path / "repo"
    proc = _shell(f"grader classroom {NAME} --course my-course --out {repo} --package '{wheel}'", home, env)
    assert proc.returncode == 0, proc.stderr
    assert not any("solution" in p.name for p in repo.rglob("*"))
    nbformat.write(_answered(course, "d_a = d_diff", "d_a = -d_diff"), repo / f"{NAME}.ipynb")
    classroom = env | {"TORCH_INDEX_URL": ""}
    setup = (
        f"{sys.executable} -m venv env && . env/bin/activate && sh .github/classroom/setup.sh "
        "&& pip install -q pytest && pytest -q -p no:cacheprovider"
    )
    proc = subprocess.run(["bash", "-c", setup], cwd=repo, env=classroom, capture_output=True, text=True, timeout=1800)
    assert "4 passed" in proc.stdout and "1 failed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "d_a" in proc.stdout and "sign" in proc.stdout
