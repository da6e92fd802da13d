"""The mistakes `grader validate` derives from a solution cell: exact mutants of a small cell, and the shipped
solutions' counts. Pure: no kernel, no torch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nbformat
import pytest

from grader.mistakes import KINDS, Mistake, derive

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"

CELL = """\
d_W = None
n = x.shape[0]
### BEGIN SOLUTION
d_out = probs.clone()
d_out[range(n), y] -= 1
d_out /= n
d_W = x.T @ d_out
d_b = d_out.sum(0)
d_x = d_out @ W.T
d_var = -0.5 * (var + 1e-5) ** -1.5 * (d_xhat * diff).sum(0, keepdim=True)
d_diff2 = 1.0 / (n - 1) * ones * d_var
d_h += d_other
std_inv = (var + 1e-5) ** -0.5  # the forward pass's, kept
d_y = (a
       - b)
### END SOLUTION
untouched = d_W.T @ d_out / n


def backward(x, d_out):
    d_x = None
    ### BEGIN SOLUTION
    d_x = d_out @ W.T
    d_z = d_x * (1 - h**2) - d_skip
    ### END SOLUTION
    return d_x
"""
GRADED = {"d_W", "d_b", "d_x", "d_var", "d_diff2", "d_h", "d_y"}
SIZES = {"n": 32}
D_VAR = "d_var = -0.5 * (var + 1e-05) ** (-1.5) * "

# (kind, the statement as written, one `after` that kind must give for it)
EXPECTED = [
    ("transpose", "d_W = x.T @ d_out", "d_W = x @ d_out"),
    ("transpose", "d_W = x.T @ d_out", "d_W = x.T @ d_out.T"),
    ("transpose", "d_x = d_out @ W.T", "d_x = d_out @ W"),
    ("sum_axis", "d_b = d_out.sum(0)", "d_b = d_out.sum(1)"),
    ("sum_axis", D_VAR[:5], D_VAR + "(d_xhat * diff).sum(1, keepdim=True)"),
    ("missing_sum", "d_b = d_out.sum(0)", "d_b = d_out"),
    ("missing_sum", D_VAR[:5], D_VAR + "(d_xhat * diff)"),
    ("keepdim", "d_b = d_out.sum(0)", "d_b = d_out.sum(0, keepdim=True)"),
    ("keepdim", D_VAR[:5], D_VAR + "(d_xhat * diff).sum(0)"),
    ("factor", "d_W = x.T @ d_out", "d_W = 2 * (x.T @ d_out)"),
    ("factor", "d_W = x.T @ d_out", "d_W = 0.5 * (x.T @ d_out)"),
    ("factor", "d_out /= n", "pass"),
    ("factor", "d_diff2 =", "d_diff2 = 1.0 * ones * d_var"),
    ("factor", "std_inv =", "std_inv = var + 1e-05"),
    ("factor", D_VAR[:5], "d_var = (var + 1e-05) ** (-1.5) * (d_xhat * diff).sum(0, keepdim=True)"),
    ("sign", "d_W = x.T @ d_out", "d_W = -(x.T @ d_out)"),
    ("sign", D_VAR[:5], "d_var = 0.5 * (var + 1e-05) ** (-1.5) * (d_xhat * diff).sum(0, keepdim=True)"),
    ("accumulate", "d_h += d_other", "d_h = d_other"),
    ("dropped_term", "d_h += d_other", "pass"),
    ("dropped_term", "d_out[range(n), y] -= 1", "pass"),
    ("dropped_term", "d_z = d_x * (1 - h**2) - d_skip", "d_z = d_x * (1 - h ** 2)"),
    ("dropped_term", "d_y = (a - b)", "d_y = a"),
    ("dropped_term", "d_y = (a - b)", "d_y = -b"),
    ("bessel", "d_diff2 =", "d_diff2 = 1.0 / n * ones * d_var"),
]


@pytest.fixture(scope="module")
def mistakes() -> list[Mistake]:
    return derive("ex1", CELL, GRADED, SIZES)


def solution_lines(source: str) -> set[int]:
    lines, inside, found = source.split("\n"), False, set()
    for number, line in enumerate(lines, 1):
        if line.strip() == "### END SOLUTION":
            inside = False
        if inside:
            found.add(number)
        if line.strip() == "### BEGIN SOLUTION":
            inside = True
    return found


@pytest.mark.parametrize(("kind", "before", "after"), EXPECTED)
def test_each_kind_gives_the_mutant_expected(mistakes: list[Mistake], kind: str, before: str, after: str) -> None:
    afters = [m.after for m in mistakes if m.kind == kind and m.before.startswith(before)]
    assert after in afters, f"{kind} of {before!r}: {afters}"


def test_every_kind_appears(mistakes: list[Mistake]) -> None:
    assert {m.kind for m in mistakes} == set(KINDS)
    assert {kind for kind, _, _ in EXPECTED} == set(KINDS)


def test_only_solution_lines_change_and_every_source_compiles(mistakes: list[Mistake]) -> None:
    original, solution = CELL.split("\n"), solution_lines(CELL)
    for m in mistakes:
        compile(m.source, "<cell>", "exec")
        mutated = m.source.split("\n")
        end = m.line + len(original) - len(mutated)  # the statement's last line (d_y spans two)
        assert set(range(m.line, end + 1)) <= solution, m.describe()
        assert mutated[: m.line - 1] == original[: m.line - 1], m.describe()
        assert mutated[m.line :] == original[end:], m.describe()
        assert mutated[m.line - 1].strip().startswith(m.after), m.describe()


def test_the_nested_region_keeps_its_indentation(mistakes: list[Mistake]) -> None:
    nested = [m for m in mistakes if m.after == "d_x = d_out @ W" and m.line > 20]
    assert len(nested) == 1
    assert "\n    d_x = d_out @ W\n" in nested[0].source


def test_a_trailing_comment_stays(mistakes: list[Mistake]) -> None:
    (m,) = [m for m in mistakes if m.after == "std_inv = var + 1e-05"]
    assert "\nstd_inv = var + 1e-05  # the forward pass's, kept\n" in m.source


def test_variable_names_the_graded_target_or_none_for_a_temporary(mistakes: list[Mistake]) -> None:
    variables = {m.before: m.variable for m in mistakes}
    assert variables["d_W = x.T @ d_out"] == "d_W"
    assert variables["d_h += d_other"] == "d_h"
    assert variables["d_out /= n"] is None
    assert variables["d_out[range(n), y] -= 1"] is None
    assert variables["std_inv = (var + 1e-5) ** -0.5"] is None
    assert variables["d_z = d_x * (1 - h**2) - d_skip"] is None
    assert {m.target for m in mistakes if m.variable is None} == {"d_out", "std_inv", "d_z"}


def test_descriptions(mistakes: list[Mistake]) -> None:
    described = {m.describe() for m in mistakes}
    assert "d_W: transpose dropped (x.T @ d_out -> x @ d_out)" in described
    assert "d_out: division by n (= 32) dropped (d_out /= n -> pass)" in described
    assert "d_h: `+=` written `=` (d_h += d_other -> d_h = d_other)" in described
    assert "d_b: sum over axis 1, not 0 (d_out.sum(0) -> d_out.sum(1))" in described
    assert (
        "d_diff2: n - 1 (= 31) written n (= 32) (1.0 / (n - 1) * ones * d_var -> 1.0 / n * ones * d_var)" in described
    )


def test_order_caps_and_no_duplicates(mistakes: list[Mistake]) -> None:
    assert [(m.line, KINDS.index(m.kind)) for m in mistakes] == sorted((m.line, KINDS.index(m.kind)) for m in mistakes)
    assert len({(m.line, m.after) for m in mistakes}) == len(mistakes)
    assert all(m.after != m.before for m in mistakes)
    per_kind = Counter((m.line, m.kind) for m in mistakes)
    assert max(n for (_, kind), n in per_kind.items() if kind not in ("factor", "sign")) <= 2
    assert max(per_kind.values()) <= 6  # factor: three rules of two


def test_no_markers_or_no_parse_gives_nothing() -> None:
    assert derive("ex1", "d_W = x.T @ d_out\nd_b = d_out.sum(0)\n", GRADED) == []
    assert derive("ex1", "### BEGIN SOLUTION\nd_W = x.T @\n### END SOLUTION\n", GRADED) == []
    assert derive("ex1", "### BEGIN SOLUTION\nd_W = x.T @ d_out\n", GRADED) == []  # never closed


def test_a_tuple_assigned_elementwise_names_each_variable() -> None:
    cell = "### BEGIN SOLUTION\nd_a, d_b = x.sum(0), -y\nloss, h = mlp(W * 0.01)\n### END SOLUTION\n"
    mistakes = derive("ex1", cell, {"d_b", "h"})
    assert ("d_a, d_b = (x.sum(0), y)", "d_b") in {(m.after, m.variable) for m in mistakes}
    assert ("d_a, d_b = (x, -y)", None) in {(m.after, m.variable) for m in mistakes}
    # A call's result unpacked: only inside the call, never `-(mlp(...))`.
    assert [m.after for m in mistakes if m.line == 3] == ["loss, h = mlp(W)"]
    assert {m.variable for m in mistakes if m.line == 3} == {"h"}


def answer_cells(notebook: Path) -> list[tuple[str, str]]:
    cells = nbformat.read(notebook, as_version=4).cells
    return [
        (cell.metadata["nbgrader"]["grade_id"], cell.source)
        for cell in cells
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution")
    ]


@pytest.mark.parametrize("name", ["backprop_ninja", "activations_batchnorm", "leaky_abstractions"])
def test_every_shipped_answer_cell_gives_mistakes_that_compile(name: str) -> None:
    counts: Counter[str] = Counter()
    for grade_id, source in answer_cells(SOLUTIONS / f"{name}.ipynb"):
        if "### BEGIN SOLUTION" not in source:
            continue
        mistakes = derive(grade_id, source, set(), {"n": 32})
        assert mistakes, grade_id
        for m in mistakes:
            compile(m.source, f"<{grade_id}>", "exec")
        counts.update(m.kind for m in mistakes)
    summary = f"{sum(counts.values())} mistakes: {dict(counts)}"
    assert counts, summary
    assert sum(counts.values()) < 400, summary
