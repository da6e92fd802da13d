"""`grader.check`, the self-check students run inside the notebook."""

from __future__ import annotations

import torch

from grader import check


def _with_grad():
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    (x**2).sum().backward()
    return x


def test_right_answer_prints_the_cmp_line_and_returns_true(capsys):
    x = _with_grad()
    assert check("x", 2 * x.detach(), x) is True
    assert capsys.readouterr().out == "x               | exact: True  | approximate: True  | maxdiff: 0.0\n"


def test_wrong_shape_is_explained_before_submitting(capsys):
    x = _with_grad()
    assert check("x", 2 * x.detach()[0], x) is False
    out = capsys.readouterr().out
    assert "exact: False" in out and "d_x: shape (3,), expected (1, 3) -- keep the dimension (keepdim=True)" in out


def test_stub_and_missing_reference_say_what_to_do(capsys):
    x = _with_grad()
    assert check("x", None, x) is False
    assert "d_x is None: replace the stub with your gradient" in capsys.readouterr().out
    assert check("y", torch.ones(3), torch.ones(3)) is False
    assert "y.grad is None" in capsys.readouterr().out


def test_uses_the_rubric_tolerance_of_the_variable(capsys):
    b1 = torch.zeros(4, requires_grad=True)
    b1.grad = torch.tensor([1e-8, -1.4e-8, 0.0, 3e-9])  # rounding noise, as autograd returns for d_b1
    assert check("b1", torch.zeros(4), b1) is True  # the rubric's atol for d_b1
    assert check("other", torch.zeros(4), b1) is False  # plain allclose defaults
