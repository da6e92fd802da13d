"""What a worker process is given on the grader's side: its environment, its folder with the data files, and
which of the host's paths a run may not see.

Guarantees: a worker's environment holds nothing of the grader's own but what Python needs (`child_env`);
`hideable` never hides a folder the interpreter, its packages or the grader package need (`python_paths`).

Portable: nothing here may use an API that macOS or Windows lacks (`tests/test_portability.py` checks).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def child_env(workdir: Path, own_path: bool = False) -> dict[str, str]:
    """The whole environment of a worker process: nothing of the grader's own but what Python needs.

    `own_path`: keep the caller's PYTHONPATH after the grader's (the portable backend, which hides
    nothing anyway). The Linux backend does not: each folder on it would be in every run's view.
    """
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    # so that a source checkout works like an installed package
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep) if own_path else []
    path = os.pathsep.join([package_parent, *filter(None, inherited)])
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",  # Windows' console code page cannot print every notebook's output
        "ATEN_CPU_CAPABILITY": "default",  # same kernels as the reference: `exact` means the same
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",  # plots render off screen
    }
    # Windows cannot start Python without these; OpenBLAS's tuning where the machine needs it
    for passthrough in ("SYSTEMROOT", "SystemRoot", "WINDIR", "TEMP", "TMP", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def worker_folder(data_files: dict[str, Path]) -> Path:
    """A new folder for a worker, holding its copy of each data file under the name the cells read."""
    folder = Path(tempfile.mkdtemp(prefix="grader-worker-"))
    copy_data(folder, data_files)
    return folder


def copy_data(folder: Path, data_files: dict[str, Path]) -> None:
    """Copy each data file into `folder` under the name the cells read it by."""
    for name, source in data_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)  # `data/names.txt`
        shutil.copyfile(source, folder / name)


def python_paths() -> list[Path]:
    """Folders a run must still be able to read: Python, its packages and the grader itself.

    Each as given and as resolved: a module imported through a symlinked path must be found there too.
    """
    roots: list[str | Path] = [sys.prefix, sys.base_prefix, *sys.path, Path(__file__).parent.parent]
    given = [Path(os.path.abspath(p)) for p in roots if p]
    return list(dict.fromkeys([*given, *(p.resolve() for p in given)]))


def hideable(paths: list[Path]) -> list[str]:
    """The folders and files of `paths` that exist and hold nothing a run needs, outermost first."""
    keep = python_paths()
    out: list[Path] = []
    for path in sorted({Path(p).resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not path.exists() or path == Path(path.anchor) or any(n == path or path in n.parents for n in keep):
            continue
        if not any(o in path.parents for o in out if o.is_dir()):  # already hidden with its folder
            out.append(path)
    return [str(p) for p in out]
