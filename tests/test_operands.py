"""The student's own line, changed in one place (grader.reference.operands): which mistakes it names, and that
nothing in the line runs but the evaluator's own few operations."""

import ast

import torch

from grader.reference.operands import _assignments, _named_change


def _hint(cell: str, name: str, env: dict, value: torch.Tensor, target: torch.Tensor) -> str:
    return _named_change(_assignments(ast.parse(cell), name), name, env, value, target)


g = torch.Generator().manual_seed(0)
d_att, q = torch.randn(2, 5, 5, generator=g), torch.randn(2, 5, 3, generator=g)
right = d_att.transpose(-2, -1) @ q


def test_a_transpose_missing_or_too_many_inside_a_matrix_product_is_named_in_the_students_code():
    env = {"d_att": d_att, "q": q, "head_size": 3}
    hint = _hint("d_k = (d_att @ q) * head_size**-0.5", "d_k", env, (d_att @ q) * 3**-0.5, right * 3**-0.5)
    assert hint.startswith("a transpose missing in the matrix product `d_att @ q`: with `d_att` transposed")
    wrong = d_att.transpose(-2, -1) @ q.transpose(-2, -1).transpose(-2, -1)
    cell = "d_k = d_att.T @ q.mT.mT\n"  # (a made-up line: `.T` on a batch is deprecated, but means the last two)
    assert _hint(cell, "d_k", env, wrong, d_att @ q).startswith("a transpose too many in the matrix product")


def test_a_sum_over_the_wrong_dimensions_is_named_with_the_right_ones():
    x = torch.randn(4, 8, 16, generator=g)
    hint = _hint("d_b = x.sum((0, 2))", "d_b", {"x": x}, x.sum((0, 2)), x.sum((0, 1)))
    assert (
        hint
        == "the sum in `x.sum((0, 2))` is over the wrong dimensions: over dimensions 0 and 1 it gives the right gradient"
    )
    # kept dimensions and `+=` lines: the chain from the last plain `=` is what counts
    cell = "d_x = 0 * x\nd_x = x.clone()\nd_x += x.sum(-2, keepdim=True)\n"
    assert "over dimension 2" in _hint(cell, "d_x", {"x": x}, x + x.sum(1, keepdim=True), x + x.sum(2, keepdim=True))


def test_no_hint_where_the_line_does_not_give_the_students_value_or_no_single_change_fits():
    env = {"d_att": d_att, "q": q}
    assert _hint("d_k = d_att @ q", "d_k", env, right, right) == ""  # (their value came from elsewhere)
    assert _hint("d_k = d_att @ q", "d_k", env, d_att @ q, 2 * right) == ""
    # assigned in a loop too: the lines alone do not say what it holds
    assert _hint("d_k = d_att @ q\nfor i in range(2):\n    d_k = d_k\n", "d_k", env, d_att @ q, right) == ""


def test_nothing_but_arithmetic_matrix_products_transposes_and_sums_is_evaluated(tmp_path, capsys):
    marker = tmp_path / "ran"
    env = {"d_att": d_att, "q": q, "open": open, "print": print}
    for cell in (
        f"d_k = d_att @ q + 0 * len(open({str(marker)!r}, 'w').name)",
        "d_k = d_att @ q if print('ran') is None else q",
        "d_k = (d_att @ q).__class__.__mro__[0](d_att @ q)",
        "d_k = d_att[:, None] @ q",
        "import os\nd_k = d_att @ q + os.getpid()",
    ):
        assert _hint(cell, "d_k", env, d_att @ q, right) == ""
    assert not marker.exists()
    assert capsys.readouterr().out == ""


def test_a_line_cannot_make_the_grader_allocate_much_more_than_its_tensors():
    column, row = torch.ones(4000, 1), torch.ones(1, 4000)
    env = {"column": column, "row": row}
    # 16 million entries from two of 4,000: not evaluated, so no hint (and no 64 MB allocated per try)
    assert _hint("d_w = (column * row).sum(0)", "d_w", env, torch.full((4000,), 4000.0), torch.ones(4000)) == ""


def test_values_that_are_not_finite_name_nothing_and_break_nothing():
    nan = torch.full((2, 5, 3), float("nan"))
    env = {"d_att": d_att, "q": q}
    assert _hint("d_k = d_att @ q", "d_k", env, d_att @ q, nan) == ""  # a reference of NaNs (a mutant's)
    env = {"d_att": torch.full_like(d_att, float("inf")), "q": q}
    assert _hint("d_k = d_att @ q", "d_k", env, env["d_att"] @ q, right) == ""  # an answer that overflowed


def test_a_cell_that_does_not_parse_gives_no_hint_and_no_error():
    # what the fuzzer's damaged notebooks hold: a null byte, nesting deeper than the parser goes
    from grader import assignment as assignments
    from grader.plan import Capture, Plan, PlannedCell
    from grader.reference.operands import operand_hints
    from grader.runs import Captured

    graded = assignments.load("backprop_ninja")
    # (a chain of additions deeper than the parser's recursion: the fuzzer's case that raised RecursionError)
    for source in ("d_probs = 1\x00", "d_probs = " + "(" * 5000 + ")" * 5000, "x = " + " + ".join(["1"] * 100_000)):
        plan = Plan((PlannedCell("cell 1 (ex1)", source, no_grad=False),), (Capture("ex1", ("d_probs",), 0, 1),), ())
        captured = Captured(True, "", (), {("ex1", "d_probs"): torch.ones(3)})
        assert operand_hints(graded, dict(graded.published), plan, captured, {}) == {}
