"""The grader works where Linux's calls do not exist: macOS, Windows, or Linux without them.

Here the stand-in (`tests/stand_in/sitecustomize.py`) takes away what macOS and Windows lack (`os.fork`,
`os.pidfd_open`, `SOCK_SEQPACKET`, `send_fds`, `resource`, ...) from the grader and from every process
it starts, so the portable backend cannot quietly depend on them; and the sources are checked so that no
module outside the Linux backend even names them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    NOTEBOOKS,
    ROOT,
    SOLUTION,
    grader_command,
    linux_sandbox,
    sandbox_processes,
    user_pytest,
    without_linux_calls,
)

pytestmark = pytest.mark.portable

LINUX_BACKEND = {
    "grader/sandbox/linux.py",
    "grader/sandbox/linux_start.py",
    "grader/sandbox/linux_child.py",
    "grader/sandbox/confine.py",
    "grader/sandbox/syscalls.py",
    "grader/sandbox/linux_check.py",
}
LINUX_ONLY_ATTRIBUTES = {
    "fork",
    "forkpty",
    "pidfd_open",
    "unshare",
    "setns",
    "prctl",
    "SOCK_SEQPACKET",
    "send_fds",
    "recv_fds",
}


def test_no_module_outside_the_linux_backend_names_a_linux_only_call():
    offenders = []
    for path in sorted((ROOT / "grader").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in LINUX_BACKEND:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in LINUX_ONLY_ATTRIBUTES:
                offenders.append(f"{relative}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Import) and any(a.name == "resource" for a in node.names):
                offenders.append(f"{relative}:{node.lineno} import resource")
            elif isinstance(node, ast.ImportFrom) and node.module == "resource":
                offenders.append(f"{relative}:{node.lineno} from resource")
            elif isinstance(node, ast.Constant) and node.value in ("prctl", "unshare", "pidfd_open"):
                offenders.append(f"{relative}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_the_stand_in_really_takes_the_calls_away():
    code = (
        "import os, socket\ntry:\n    import resource\nexcept ImportError:\n    resource = None\n"
        "print(hasattr(os, 'fork'), hasattr(os, 'pidfd_open'), hasattr(socket, 'SOCK_SEQPACKET'), resource)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=without_linux_calls())
    assert done.stdout.split() == ["False", "False", "False", "None"], done.stderr


def test_auto_chooses_the_portable_backend_and_says_what_does_not_hold():
    code = "from grader import sandbox; b = sandbox.choose(); print(b.name); print(b.warning)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=without_linux_calls())
    name, warning = done.stdout.splitlines()
    assert name == "portable", done.stderr
    assert "read and write your files" in warning and "network" in warning
    # the reason: on Linux the first call the stand-in took away; elsewhere the platform itself
    assert ("no os.fork" if sys.platform.startswith("linux") else f"this is {sys.platform}") in warning


def test_asking_for_the_linux_backend_where_it_cannot_work_is_one_line():
    done = subprocess.run(
        [*grader_command(), "check", str(SOLUTION), "--sandbox", "linux"],
        capture_output=True,
        text=True,
        env=without_linux_calls(),
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    reason = "this Python has no os.fork" if sys.platform.startswith("linux") else f"this is {sys.platform}, not Linux"
    assert line == f"grader: the Linux sandbox cannot work here: {reason}"


def test_an_unknown_sandbox_in_the_environment_is_a_usage_error():
    done = subprocess.run(
        [*grader_command(), "check", str(SOLUTION)],
        capture_output=True,
        text=True,
        env=dict(os.environ, GRADER_SANDBOX="docker"),
    )
    assert done.returncode == 2
    assert "GRADER_SANDBOX: 'docker' is not a sandbox; choose one of auto, linux, portable" in done.stderr


def _check(notebook: Path, backend: str, *extra: str) -> tuple[dict, str]:
    env = without_linux_calls() if backend == "portable" else dict(os.environ)
    done = subprocess.run(
        [*grader_command(), "check", str(notebook), "--json", "--sandbox", backend, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def _grades(report: dict) -> dict:
    """What a student and an instructor read: everything but the memory it took."""
    return {k: v for k, v in report.items() if k != "peak_memory_mb"}


@pytest.mark.parametrize("name, extra", [("full_marks", ()), ("wrong_d_W2", ()), ("infinite_loop", ("--timeout", "8"))])
def test_the_portable_backend_gives_the_linux_backends_report(name, extra):
    notebook = NOTEBOOKS / f"{name}.ipynb"
    since = time.time()
    portable, warning = _check(notebook, "portable", *extra)
    assert "portable sandbox" in warning and len(warning.strip().splitlines()) == 1
    assert sandbox_processes(since) == []  # the endless notebook was stopped, with everything it started
    if name == "full_marks":
        assert portable["score"] == portable["max_score"]
    if name == "wrong_d_W2":
        d_W2 = next(v for v in portable["variables"] if v["name"] == "d_W2")
        assert d_W2["points"] == 0 and "1/n" in d_W2["message"], d_W2
    if name == "infinite_loop":  # its endless cell gets half of the run's 8 s, then the run goes on
        assert "interrupted after 4 s" in json.dumps(portable) and portable["status"] == "graded"
    if not linux_sandbox():
        pytest.skip("no Linux backend on this machine to compare with")
    linux, warning = _check(notebook, "linux", *extra)
    assert warning == ""
    assert _grades(portable) == _grades(linux)


def test_the_pytest_plugin_grades_with_the_portable_backend(tmp_path):
    env = without_linux_calls() | {"GRADER_SANDBOX": "portable"}
    done = user_pytest(tmp_path, "--grade", str(NOTEBOOKS / "wrong_d_W2.ipynb"), "-q", env=env, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed, 37 passed" in done.stdout and "d_W2: it is the right gradient times 1/n" in done.stdout


def test_grader_grade_with_parallel_jobs_and_a_folder_name_with_spaces(tmp_path):
    folder = tmp_path / "class of 2026"
    folder.mkdir()
    for name in ("full_marks", "wrong_d_W2", "half_done"):
        (folder / f"{name}.ipynb").write_bytes((NOTEBOOKS / f"{name}.ipynb").read_bytes())
    out = tmp_path / "grades out"
    since = time.time()
    done = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(folder),
            "--assignment",
            "backprop_ninja",
            "--out",
            str(out),
            "--jobs",
            "3",
            "--sandbox",
            "portable",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_linux_calls(),
    )
    assert done.returncode == 0, done.stderr
    grades = (out / "grades.csv").read_text(encoding="utf-8")
    assert all(row in grades for row in ("full_marks,", "wrong_d_W2,", "half_done,"))
    scores = {
        Path(json.loads(p.read_text())["notebook"]).name: json.loads(p.read_text())["score"]
        for p in (out / "reports").glob("*.json")
    }
    assert scores == {"full_marks.ipynb": 36, "wrong_d_W2.ipynb": 35, "half_done.ipynb": 8}
    assert sandbox_processes(since) == []


def test_where_user_namespaces_are_refused_auto_falls_back_naming_the_setting():
    """`user.max_user_namespaces=0` inside a user namespace of the test's own: no namespace below it can be made
    (the setting is per namespace, so nothing else on the machine is touched)."""
    import shutil

    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        pytest.skip("needs Linux and unshare")
    probe = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine refuses user namespaces already")
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    done = subprocess.run(
        ["unshare", "-Ur", "sh", "-c", script, "sh", *grader_command(), "check", str(SOLUTION)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, GRADER_LINUX_MODE="userns"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("Total: 36/36")
    warning = done.stderr.strip().splitlines()
    assert len(warning) == 1 and "portable sandbox (unprivileged user namespaces refused" in warning[0]
    assert "user.max_user_namespaces=0" in warning[0]
