"""Tolerances and exactness hold for other seeds, and a planted error is caught for every one of them.

The fast test runs the (trusted) solution code in this process against the grader's own reference and
comparison, for 50 seeds; the slow one does the same end to end through `grade_notebook`.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
import torch
from conftest import RELEASE, SOLUTION

from grader import assets, notebook, reference
from grader import assignment as assignments
from grader.assignment import released_parameters
from grader.compare import compare
from grader.grade import grade_notebook
from grader.reference import expected

RUBRIC = assignments.rubric_of("backprop_ninja")
ASSIGNMENT = assignments.load("backprop_ninja")
RELEASED = nbformat.read(RELEASE, as_version=4)
SEEDS = range(1, 51)
PLANTED = ("d_b1 = d_hprebn.sum(0)", "d_b1 = d_hprebn[0].clone()")  # one row instead of the column sum


def _answers(source: str) -> str:
    return source.split("### BEGIN SOLUTION\n")[1].split("### END SOLUTION")[0]


@pytest.fixture(scope="module")
def solution_cells() -> dict[str, str]:
    nb = nbformat.read(SOLUTION, as_version=4)
    return {notebook.grade_id(c): c.source for c in nb.cells if c.cell_type == "code" and notebook.grade_id(c)}


@pytest.fixture(scope="module")
def after_setup(solution_cells) -> dict:
    ns = released_parameters(RELEASED) | RUBRIC.grading_parameters | {"data_path": assets.names_path()}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(solution_cells["setup"], ns)
    return ns


def _grade_in_process(cells: dict[str, str], base: dict, seed: int, ex1: str) -> dict[tuple[str, str], str]:
    params = (
        released_parameters(RELEASED) | RUBRIC.grading_parameters | {"seed": seed, "data_path": assets.names_path()}
    )
    ref = reference.gradients(ASSIGNMENT, params)
    ns = dict(base) | {"seed": seed}
    verdicts = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(cells["init"], ns)
        exec(cells["forward"], ns)
        for ex in (e for e in RUBRIC.exercises if e.function is None):
            exec(ex1 if ex.id == "ex1" else _answers(cells[ex.cell]), ns)
            for v in ex.variables:
                verdicts[(ex.id, v.name)] = compare(v.name, ns[v.name], ref[v.of], v.tolerance).status
    return verdicts


def test_full_marks_and_a_caught_planted_error_for_50_seeds(solution_cells, after_setup):
    right = _answers(solution_cells["ex1"])
    planted = right.replace(*PLANTED)
    assert planted != right
    for seed in SEEDS:
        verdicts = _grade_in_process(solution_cells, after_setup, seed, right)
        assert all(s in ("exact", "approximate") for s in verdicts.values()), (seed, verdicts)
        assert len(verdicts) == 28
        assert all(s == "exact" for (ex, _), s in verdicts.items() if ex == "ex1"), seed
        verdicts = _grade_in_process(solution_cells, after_setup, seed, planted)
        assert verdicts[("ex1", "d_b1")] == "wrong", seed
        assert sum(s == "wrong" for s in verdicts.values()) == 1, seed


@pytest.mark.slow
def test_end_to_end_for_50_seeds(tmp_path):
    nb = nbformat.read(SOLUTION, as_version=4)
    for cell in nb.cells:
        if notebook.grade_id(cell) == "ex1":
            cell.source = cell.source.replace(*PLANTED)
    planted = tmp_path / "planted_d_b1.ipynb"
    nbformat.write(nb, planted)

    def both(seed: int):
        # the seeds are the hidden runs here
        return (
            grade_notebook(SOLUTION, parameters={"seed": seed}, hidden_runs=()),
            grade_notebook(planted, parameters={"seed": seed}, hidden_runs=()),
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        for seed, (good, bad) in zip(SEEDS, pool.map(both, SEEDS)):
            assert good.score == good.max_score, (seed, [v for v in good.variables if v.points == 0])
            assert [v.name for v in bad.variables if v.points == 0] == ["d_b1"], seed


def test_references_computed_in_two_threads_match_sequential_ones():
    params = [
        released_parameters(RELEASED) | RUBRIC.grading_parameters | {"seed": s, "data_path": assets.names_path()}
        for s in (101, 102)
    ]
    expected._gradients.cache_clear()
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(lambda p: reference.gradients(ASSIGNMENT, p), params))
    expected._gradients.cache_clear()
    for p, got in zip(params, parallel):
        want = reference.gradients(ASSIGNMENT, p)
        assert all(torch.equal(got[k], want[k]) for k in want if isinstance(want[k], torch.Tensor))


def test_computing_the_reference_imports_no_module():
    # The grader lets the notebook run once its imports are done and then computes the reference: a module
    # imported only now could be one a hostile notebook has just written to disk.
    code = """
import sys
import safetensors.torch
from grader import assets, assignment as assignments, grade, notebook, reference, rubric, score
from grader.reports import text as report
a = assignments.load("backprop_ninja")
r = a.rubric
params = dict(a.published) | r.grading_parameters | {"data_path": assets.names_path()}
before = set(sys.modules)
reference.gradients(a, params)
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
