"""The GitHub Actions workflow, checked offline: GitHub would accept it, and it runs what it should.

A workflow that GitHub rejects fails silently on the next push (no run, only a notice in the
Actions tab), so it is checked here against the workflow schema that check-jsonschema vendors.
The schema cannot say what the steps do; the rest of the file reads the parsed YAML for that.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.portable

WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"
RUNNER_OS = {"ubuntu-latest": "Linux", "macos-latest": "macOS", "windows-latest": "Windows"}
"""Each matrix label and the `runner.os` its steps see."""


def _check_jsonschema() -> str:
    """The check-jsonschema script of the environment running the tests."""
    # A venv keeps scripts beside python (bin/ or Scripts/); a Windows install without one, in Scripts/ below it.
    here = Path(sys.executable).parent
    found = shutil.which("check-jsonschema", path=os.pathsep.join([str(here), str(here / "Scripts")])) or shutil.which(
        "check-jsonschema"
    )
    assert found, "check-jsonschema is not installed: pip install -e '.[test]'"
    return found


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    # The vendored schema ships inside check-jsonschema: no network.
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _load() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    # PyYAML reads YAML 1.1, where a bare `on` is the boolean true; GitHub reads it as the key "on".
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def _job() -> dict:
    (job,) = _load()["jobs"].values()
    return job


def _steps_on(job: dict, runner_os: str) -> list[dict]:
    """The steps that run on `runner_os`, judged by their `if:` (only the runner.os tests this file uses)."""
    steps = []
    for step in job["steps"]:
        condition = step.get("if")
        if condition is None:
            steps.append(step)
            continue
        test = re.fullmatch(r"\s*runner\.os\s*(==|!=)\s*'(\w+)'\s*", condition)
        assert test, f"{step.get('name')}: this test cannot judge `if: {condition}`; teach _steps_on"
        if (test[2] == runner_os) == (test[1] == "=="):
            steps.append(step)
    return steps


def _pytest_args(step: dict) -> list[str] | None:
    """The arguments of the pytest command in `step`, or None if it runs no pytest."""
    for line in step.get("run", "").splitlines():
        words = shlex.split(line)
        if "pytest" in words:
            return words[words.index("pytest") + 1 :]
    return None


def test_workflow_passes_github_schema() -> None:
    result = _validate(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (lambda job: None, None),  # the round trip alone: what fails below fails for its edit
        (lambda job: job.pop("runs-on"), "'runs-on' is a required property"),
        (lambda job: job.update(steps="pytest"), "$.jobs.test.steps: 'pytest' is not of type 'array'"),
    ],
    ids=["unchanged", "no-runs-on", "steps-a-string"],
)
def test_schema_rejects_broken_copy(tmp_path: Path, edit, complaint: str | None) -> None:
    workflow = _load()
    edit(workflow["jobs"]["test"])
    broken = tmp_path / "tests.yml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
    result = _validate(broken)
    if complaint is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0
        assert complaint in result.stdout + result.stderr


def test_runs_on_every_push_and_pull_request() -> None:
    assert {"push", "pull_request", "workflow_dispatch"} <= set(_load()["on"])


def test_three_platforms_independently() -> None:
    job = _job()
    assert job["runs-on"] == "${{ matrix.os }}"
    assert sorted(job["strategy"]["matrix"]["os"]) == sorted(RUNNER_OS)
    assert job["strategy"]["fail-fast"] is False
    assert 0 < job["timeout-minutes"] <= 60


@pytest.mark.parametrize("label", RUNNER_OS)
def test_torch_cpu_build_installed_before_project(label: str) -> None:
    steps = _steps_on(_job(), RUNNER_OS[label])
    runs = [step.get("run", "") for step in steps]
    torch = [
        i
        for i, run in enumerate(runs)
        if "torch==2.13.0" in run and "--index-url https://download.pytorch.org/whl/cpu" in run
    ]
    project = [i for i, run in enumerate(runs) if '-e ".[test]"' in run]
    assert torch and project, runs
    assert max(torch) < min(project), "the project's torch>=2.2 would pull PyPI's CUDA build first"
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert setup["with"]["cache"] == "pip"


@pytest.mark.parametrize("label", RUNNER_OS)
def test_pytest_command_per_platform(label: str) -> None:
    workflow, job = _load(), _job()
    runner_os = RUNNER_OS[label]
    tests = [step for step in _steps_on(job, runner_os) if _pytest_args(step) is not None]
    assert len(tests) == 1, f"{label}: {len(tests)} pytest steps"
    (step,) = tests
    args = _pytest_args(step)
    env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
    if runner_os == "Linux":
        # The whole default suite: no marker filter, no slow tests, the sandbox left to choose.
        assert args == [], args
        assert "GRADER_SANDBOX" not in env
        # As the runner's ordinary user: no sudo before pytest, in the command or the shell.
        shell = step.get("shell") or job.get("defaults", {}).get("run", {}).get("shell", "")
        assert "sudo" not in shlex.split(step["run"]) + shlex.split(shell)
    else:
        assert args == ["-m", "portable"], args
        assert env.get("GRADER_SANDBOX") == "portable"
