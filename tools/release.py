"""Make the released (student) notebooks from the instructor's solutions, with nbgrader.

    python tools/release.py [NAME ...]     (default: every notebook in solutions/)

The repository is not laid out as an nbgrader course (`solutions/NAME.ipynb`, `assignments/NAME.ipynb`),
so this makes one in a temporary directory: `source/NAME/NAME.ipynb` and the repository's
`nbgrader_config.py`, runs the real `nbgrader generate_assignment NAME` there, and copies
`release/NAME/NAME.ipynb` back into `assignments/`. Needs nbgrader (`pip install .[nbgrader]`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def generate(solution: Path, out: Path, config: Path = REPOSITORY / "nbgrader_config.py") -> Path:
    """Run `nbgrader generate_assignment` on `solution` and write the released notebook to `out`."""
    name = solution.stem
    with tempfile.TemporaryDirectory(prefix="grader-release-") as tmp:
        course = Path(tmp)
        (course / "source" / name).mkdir(parents=True)
        shutil.copyfile(solution, course / "source" / name / solution.name)
        shutil.copyfile(config, course / "nbgrader_config.py")
        # nbgrader runs `alembic` to make its gradebook: find it beside this interpreter even when the
        # virtual environment is not activated
        env = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        proc = subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force"],
            cwd=course,
            capture_output=True,
            text=True,
            env=env,
        )
        released = course / "release" / name / solution.name
        if proc.returncode != 0 or not released.is_file():
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}{proc.stderr}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(released, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Regenerate assignments/NAME.ipynb for each NAME (default: all solutions)."""
    names = sys.argv[1:] if argv is None else argv
    solutions = [REPOSITORY / "solutions" / f"{n}.ipynb" for n in names] or sorted(
        (REPOSITORY / "solutions").glob("*.ipynb")
    )
    for solution in solutions:
        if not solution.is_file():
            print(f"no solution notebook {solution}", file=sys.stderr)
            return 2
        print(generate(solution, REPOSITORY / "assignments" / solution.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
