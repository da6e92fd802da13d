"""The library entry point: grade one notebook, stage by stage.

load the notebook -> plan its run -> run it in a child process (while the reference is computed
here) -> compare and score -> a `Report`.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from grader import assets, notebook, rubric as rubrics, sandbox

if TYPE_CHECKING:
    from grader.score import Report


def released_parameters(released_nb) -> dict[str, object]:
    """The default values of the released notebook's `parameters` cell."""
    ns: dict[str, object] = {}
    exec(notebook.parameters_source(released_nb), ns)  # trusted: our own released notebook
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def grade_notebook(path: str | Path, *, assignment: str | None = None, timeout: float | None = None,
                   parameters: dict[str, object] | None = None) -> Report:
    """Grade the notebook at `path` and return its `Report`.

    Parameters
    ----------
    path: the student's notebook.
    assignment: which assignment it is; by default the one its metadata names.
    timeout: wall-clock limit in seconds for running it; by default the rubric's.
    parameters: values for the `parameters` cell (e.g. `{"seed": 7}`); the rest keep their defaults.

    Raises `NotANotebook` or `UnknownAssignment` for input that cannot be graded at all; everything
    that goes wrong inside the notebook is reported in the `Report` instead.
    """
    path = Path(path)
    student = notebook.read(path)
    rubric = rubrics.load(assignment or notebook.assignment_of(student, path))
    released = notebook.read(rubric.released)
    defaults = released_parameters(released)
    unknown = set(parameters or {}) - set(defaults)
    if unknown:
        raise ValueError(f"{rubric.assignment} has no parameters {sorted(unknown)} (it has {sorted(defaults)})")
    defaults |= parameters or {}
    data_files = {name: assets.data_dir() / file for name, file in rubric.data.items()}
    # The child reads its own copy of each data file, under the file's name in its working directory.
    plan = notebook.plan(student, released, rubric, defaults | rubric.data)

    # Start the child first: its start-up overlaps with importing torch here and computing the reference.
    run = sandbox.start(plan, {rubric.data[k]: p for k, p in data_files.items()}, timeout or rubric.timeout)
    try:
        # Everything this process will need is imported before the notebook's first cell may run.
        import safetensors.torch  # noqa: F401

        from grader import reference
        from grader.score import score

        run.release()  # computing the reference imports nothing more (a test checks)
        ref = reference.gradients(rubric, released, defaults | {k: str(p) for k, p in data_files.items()})
    finally:
        captured = run.wait()
    return score(rubric, str(path), plan, captured, ref)
