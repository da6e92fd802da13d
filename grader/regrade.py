"""A class's grades kept: a submission's report is reused only while everything that graded it is unchanged.

Each input of a grade (the submission, the rubric, the released notebook, the solution where it is read, the hidden
runs, the data, the time limit, the memory cap, the grader's own code and PyTorch's version) has a digest; a report
carries them (`inputs`), and `regrade_reason` names what changed. The local batch reads the reports on disk with it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path

from grader import assignment as assignments
from grader import sandbox
from grader.assignment import Assignment
from grader.submissions import Submission


def read_report(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def existing(path: Path, digest: str) -> dict | None:
    """The report at `path` if it is one of the submission with `digest`."""
    found = read_report(path)
    return found if found is not None and found.get("sha256") == digest else None


_CHANGED = {
    "submission": "submission",
    "rubric": "rubric",
    "released": "released notebook",
    "solution": "solution",
    "hidden_runs": "hidden runs",
    "data": "data",
    "timeout": "time limit",
    "memory": "memory limit",
    "grader": "grader",
    "torch": "PyTorch",
}
"""Each input of a grade, as the progress line names it when it changed."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def _grader_version() -> str:
    """The package's version and a digest of its code and templates (the feedback page is written with the
    report): an install from a git checkout keeps its version number from commit to commit, and a grade must
    follow the code that made it."""
    try:
        version = metadata.version("backprop-grader")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"{version}+{code_digest(Path(__file__).resolve().parent)}"


def code_digest(package: Path) -> str:
    """A short digest of the `*.py` files of `package` and of everything in its `templates/` folders."""
    files = {
        p
        for p in package.rglob("*")
        if p.is_file() and (p.suffix == ".py" or "templates" in p.relative_to(package).parts)
    }
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _torch_version() -> str:
    """PyTorch's version, from its package metadata: importing torch here would delay the pool's start."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def grading_inputs(
    assignment: Assignment,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
    timeout: float | None = None,
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
) -> dict[str, str]:
    """A digest of everything besides the submission that its grade depends on, one per input: the rubric (its
    values, not its comments), the released notebook, the solution where the rubric reads it, the hidden runs
    (`hidden_runs`, or the rubric's), the data files, the time limit (`timeout`, or the rubric's) and the memory
    cap (`limits.memory`) a run had, since a run that ran out of either may pass with more, the grader's
    version, and PyTorch's (another release can compute the references a few ulps apart)."""
    rubric = assignment.rubric
    return {
        **assignment.inputs,  # the rubric, the released notebook, the solution where it is read, the data
        "hidden_runs": assignments.value_digest(list(rubric.hidden_runs if hidden_runs is None else hidden_runs)),
        "timeout": f"{timeout or rubric.timeout:g}",  # seconds, as `grade_with_runs` reads it
        "memory": f"{limits.memory / 2**20:g}",  # MB
        "grader": _grader_version(),
        "torch": _torch_version(),
    }


def regrade_reason(report: dict | None, submission: Submission, inputs: dict[str, str]) -> str | None:
    """Why `submission` must be graded again despite the earlier `report` ("rubric changed"); None to keep the
    report, "" when there is none to keep."""
    if report is None:
        return ""
    if report.get("sha256") != submission.digest:
        return "submission changed"
    kept = report.get("inputs")
    if not isinstance(kept, dict):
        return "its report does not say what graded it"
    changed = [_CHANGED[k] for k in inputs if kept.get(k) != inputs[k]]
    if not changed:
        return None
    return f"{', '.join(changed[:-1])} and {changed[-1]} changed" if len(changed) > 1 else f"{changed[0]} changed"
