"""Credit and hints on a graph that is not makemore's: the tests' own assignment (tests/assignments/attention: a
LayerNorm and one head of causal self-attention, 20 gradients in one answer cell). Each typical mistake costs its
own variable only, with a hint in this assignment's own terms (its sizes and parameters); a degenerate upstream
earns nothing below it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, answered_in_course

from grader import assignment as assignments
from grader import course as courses
from grader.grade import grade_notebook

pytest.importorskip("nbgrader")  # (the course's release is made by nbgrader)

NAME = "attention"
SOURCE = ROOT / "tests" / "assignments" / NAME


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course holding the tests' assignment, released."""
    from grader import release

    folder = tmp_path_factory.mktemp("course")
    shutil.copytree(SOURCE, folder / "source" / NAME)
    location = courses.in_course(folder, NAME)
    assert location is not None
    release.release(location)
    return folder


def _answered(course: Path, old: str = "", new: str = "") -> nbformat.NotebookNode:
    return answered_in_course(course, NAME, old, new)


# (the solution's line, the line with the mistake, the variable it must cost, what its hint must say)
MISTAKES = [
    # a transpose too many on a square gradient: the shape cannot tell
    ("d_Wq = (ln.transpose(-2, -1) @ d_q).sum(0)", "d_Wq = (ln.transpose(-2, -1) @ d_q).sum(0).T", "d_Wq", "transpose"),
    ("d_Wv = (ln.transpose(-2, -1) @ d_v).sum(0)", "d_Wv = (d_v.transpose(-2, -1) @ ln).sum(0)", "d_Wv", "transpose"),
    # a transpose missing inside a matrix product, of a square operand too: named in the student's own line
    (
        "d_k = (d_att.transpose(-2, -1) @ q) * head_size**-0.5",
        "d_k = (d_att @ q) * head_size**-0.5",
        "d_k",
        "a transpose missing in the matrix product `d_att @ q`",
    ),
    ("d_v = att_p.transpose(-2, -1) @ d_out", "d_v = att_p @ d_out", "d_v", "`att_p` transposed"),
    (
        "d_ln = d_q @ Wq.T + d_k @ Wk.T + d_v @ Wv.T",
        "d_ln = d_q @ Wq + d_k @ Wk.T + d_v @ Wv.T",
        "d_ln",
        "a transpose missing in the matrix product `d_q @ Wq`",
    ),
    # a sum over the wrong dimension: the softmax's correction term (same shape), and a shape error
    (
        "d_att_m = att_p * (d_att_p - (att_p * d_att_p).sum(-1, keepdim=True))",
        "d_att_m = att_p * (d_att_p - (att_p * d_att_p).sum(-2, keepdim=True))",
        "d_att_m",
        "is over the wrong dimension: over dimension 2 it gives the right gradient",
    ),
    (
        "d_beta = d_ln.sum((0, 1))",
        "d_beta = d_ln.sum((0, 2))",
        "d_beta",
        "the sum in `d_ln.sum((0, 2))` is over the wrong dimensions: over dimensions 0 and 1 it gives",
    ),
    # attention's scale forgotten: a factor named by the parameters that are 16 here
    (
        "d_q = (d_att @ k) * head_size**-0.5",
        "d_q = d_att @ k",
        "d_q",
        "times sqrt(n_embd) (= 4) or sqrt(head_size) (= 4):",
    ),
    # a sum over the broadcast (B, T) dimensions missing, of rank 3, or of one of them
    ("d_beta = d_ln.sum((0, 1))", "d_beta = d_ln", "d_beta", "dimensions 0 (size 4), 1 (size 8) is missing"),
    ("d_gamma = (d_ln * xhat).sum((0, 1))", "d_gamma = (d_ln * xhat).sum(0)", "d_gamma", "dimension 0 (size 8)"),
    # a flipped sign, a factor 2, keepdim dropped
    ("d_att_p = d_out @ v.transpose(-2, -1)", "d_att_p = -(d_out @ v.transpose(-2, -1))", "d_att_p", "sign"),
    ("d_diff = 2 * diff / diff.numel()", "d_diff = diff / diff.numel()", "d_diff", "times 1/2"),
    ("d_gamma = (d_ln * xhat).sum((0, 1))", "d_gamma = (d_ln * xhat).sum((0, 1), keepdim=True)", "d_gamma", "keepdim"),
    # a variable used twice: the gradient of one use only (`=` for `+=`)
    ("d_xc += 2 * xc / n_embd * d_var", "pass", "d_xc", "+="),
    # a number copied from a parameter: named by it, on the hidden run where it shows
    ("d_x += d_mu / n_embd", "d_x += d_mu / 16", "d_x", "a literal 16 where n_embd belongs (n_embd = 16"),
]


@pytest.mark.parametrize(("old", "new", "variable", "hint"), MISTAKES, ids=[m[2] + ":" + m[3] for m in MISTAKES])
def test_a_typical_mistake_costs_its_own_variable_with_a_hint_in_the_assignments_terms(
    course, tmp_path, pool, old, new, variable, hint
):
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(_answered(course, old, new), path)
    report = grade_notebook(path, course=course, pool=pool)
    lost = [v for v in report.variables if v.points < v.max_points]
    assert [v.name for v in lost] == [variable], [(v.name, v.message) for v in lost]
    assert hint in lost[0].message, lost[0].message


def test_the_solution_earns_everything_and_a_zero_upstream_earns_nothing_below_it(course, tmp_path, pool):
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(_answered(course), path)
    graded = assignments.load(NAME, course)
    assert grade_notebook(path, assignment=graded, pool=pool).score == 20
    # d_out of zeros: every step below is "right" for it (zero in, zero out), and earns nothing
    nbformat.write(_answered(course, "d_out = d_diff", "d_out = 0 * d_diff"), path)
    report = grade_notebook(path, assignment=graded, pool=pool)
    assert report.score == 1  # d_diff, above it
    below = [v for v in report.variables if v.name not in ("d_diff", "d_out")]
    assert all(v.points == 0 for v in below)
    # ... and one constant everywhere is no attempt either
    nbformat.write(_answered(course, "d_out = d_diff", "d_out = torch.ones_like(d_diff)"), path)
    assert grade_notebook(path, assignment=graded, pool=pool).score == 1
