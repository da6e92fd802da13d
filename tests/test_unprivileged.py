"""The grader as an ordinary user would run it: a real unprivileged account, its own virtual environment,
full isolation without root (user namespaces).

CI runs as root, so this test makes the user: an account with a home folder, a virtual environment made
from Debian's `/usr/bin/python3` (the pyenv Python under /root is not readable by others) with PyTorch's
CPU build and this package installed from a copy of the checkout, and runs `grader check` as that user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, SOLUTION, Listener

USER = "grader-ordinary"
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a user needs root"),
    pytest.mark.skipif(
        not (shutil.which("useradd") and shutil.which("runuser") and SYSTEM_PYTHON.exists()),
        reason="needs useradd, runuser and /usr/bin/python3",
    ),
]


def _as_user(home: Path, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`command` run as the ordinary user, with an environment of its own (not root's)."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for passthrough in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT"):
        if passthrough in os.environ:  # where this machine's pip finds the CPU build of torch
            env[passthrough] = os.environ[passthrough]
    return subprocess.run(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *command],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def home() -> Path:
    """The user's home, holding `src/` (a copy of the checkout), `venv/` (torch and the grader) and a secret."""
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    home = Path(os.path.expanduser(f"~{USER}"))
    for old in ("src", "venv", "venv-link", "secret.txt", "work"):
        old = home / old
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
    shutil.copytree(
        ROOT,
        home / "src",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".ci-venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache"
        ),
    )
    (home / "secret.txt").write_text("the user's own secret\n")
    (home / "work").mkdir()
    (home / "venv-link").symlink_to(home / "venv")  # another spelling of the same environment
    shutil.copyfile(SOLUTION, home / "work" / "solution.ipynb")
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home)], check=True)
    os.chmod(home, 0o700)  # as useradd leaves many homes: nobody else may even look in
    made = _as_user(home, str(SYSTEM_PYTHON), "-m", "venv", str(home / "venv"))
    assert made.returncode == 0, made.stderr
    installed = _as_user(home, str(home / "venv/bin/pip"), "install", "--quiet", "torch==2.13.0", str(home / "src"))
    assert installed.returncode == 0, installed.stderr[-3000:]
    return home


def _fingerprint(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_an_ordinary_user_gets_full_marks_for_the_solution_and_no_warning(home):
    done = _as_user(home, str(home / "venv/bin/grader"), "check", str(home / "work" / "solution.ipynb"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("Total: 36/36"), done.stdout
    assert done.stderr == ""  # full isolation holds: nothing to warn about
    chosen = _as_user(home, str(home / "venv/bin/python"), "-c", "from grader import sandbox; print(sandbox.choose())")
    assert "name='linux', mode='userns'" in chosen.stdout, chosen.stdout + chosen.stderr


@pytest.mark.parametrize("spelling", ["venv", "venv-link"])
def test_a_hostile_notebook_of_an_ordinary_user_gets_nothing_it_should_not(home, spelling):
    """Also with the grader's Python reached through a symlink: the view binds real paths once and makes
    the other spellings symlinks to them, so what it hides is hidden by every name."""
    listener = Listener()
    port = listener.port
    site = next((home / spelling / "lib").glob("python3*/site-packages"))
    reads = [
        site / "grader" / "_assets" / "assignments" / "backprop_ninja.toml",
        home / "src" / "assignments" / "backprop_ninja.toml",
        home / "src" / "solutions" / "backprop_ninja.ipynb",
        home / "secret.txt",
        home / "work" / "solution.ipynb",
    ]
    writes = [
        home / "pwned",
        site / "grader" / "pwned.py",
        home / "src" / "pwned",
        home / "venv" / "pwned",
        Path("/var/tmp/pwned-by-a-notebook"),
    ]
    private = [Path("/tmp/pwned-by-a-notebook"), Path("/dev/shm/pwned-by-a-notebook")]  # its own: may write there
    attack = f"""
import os, socket
leaks = []
for path in {[str(p) for p in reads]!r}:
    try:
        leaks.append(("read", path, open(path).read(40)))
    except OSError:
        pass
# the folders on the way to Python and the grader are there (empty but for that way); nothing else is
way = {{"/home": ["{home.name}"], {str(home)!r}: ["venv", "venv-link"],
       {str(site / "grader" / "_assets")!r}: ["assignments", "data"]}}
for folder in ("/home", {str(home)!r}, {str(site / "grader" / "_assets")!r}, {str(site / "grader" / "_assets" / "assignments")!r},
               "/root", "/srv", "/mnt", "/media", "/var"):
    try:
        leaks += [("listed", folder, name) for name in os.listdir(folder) if name not in way.get(folder, [])]
    except OSError:
        pass
for path in {[str(p) for p in private]!r}:
    with open(path, "w") as f:
        f.write("pwned")
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    leaks.append(("connected", {port}))
except OSError:
    pass
for path in {[str(p) for p in writes]!r}:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        leaks.append(("wrote", path))
    except OSError:
        pass
import ctypes  # the seccomp filter: no new user namespace, no tracing of its own child
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == 0:
    leaks.append(("unshared", "a user namespace"))
libc.prctl(4, 1, 0, 0, 0)
child = os.fork()
if child == 0:
    import time
    time.sleep(5)
    os._exit(0)
if libc.ptrace(16, child, 0, 0) == 0:
    leaks.append(("traced", child))
os.kill(child, 9)
os.waitpid(child, 0)
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) > 2]
for pid in others:
    try:
        leaks.append(("sees", pid, open(f"/proc/{{pid}}/cmdline").read()[:60]))
    except OSError:
        pass
raise RuntimeError(f"LEAKS {{leaks}}")
"""
    nb = nbformat.read(str(SOLUTION), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    cell.source = attack + "\n" + cell.source
    nbformat.write(nb, str(home / "work" / "hostile.ipynb"))
    subprocess.run(["chown", f"{USER}:{USER}", str(home / "work" / "hostile.ipynb")], check=True)
    before = _fingerprint(home / "src", home / "venv" / "lib", home / "work")

    done = _as_user(
        home,
        str(home / spelling / "bin" / "python"),
        "-m",
        "grader",
        "check",
        str(home / "work" / "hostile.ipynb"),
        "--json",
        "--hidden-runs",
        "/dev/null",
    )
    listener.close()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = json.loads(done.stdout)
    notes = " ".join(report["notes"])
    assert "RuntimeError: LEAKS []" in notes, notes  # it read, listed, reached, wrote and saw nothing
    assert listener.reached == []
    assert not any(p.exists() for p in writes + private)
    assert _fingerprint(home / "src", home / "venv" / "lib", home / "work") == before
