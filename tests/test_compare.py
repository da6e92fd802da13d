"""The comparison on its own, micrograd-style: build a gradient twice, compare, no notebook involved."""

from __future__ import annotations

import pytest
import torch

from grader.compare import cmp_line, compare
from grader.rubric import Tolerance
from grader.values import NotTensor

TOL = Tolerance(rtol=1e-5, atol=1e-8)


def _tanh_layer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, requires_grad=True)
    w = torch.randn(5, 3, generator=g, requires_grad=True)
    out = torch.tanh(x @ w)
    upstream = torch.randn(8, 3, generator=g)
    out.backward(upstream)
    return x, w, out.detach(), upstream


def test_hand_written_gradients_are_exact_with_pinned_kernels():
    x, w, out, upstream = _tanh_layer()
    d_pre = (1 - out**2) * upstream
    assert compare("d_w", x.detach().T @ d_pre, w.grad, TOL).status == "exact"
    assert compare("d_x", d_pre @ w.detach().T, x.grad, TOL).status == "exact"


def test_rounding_differences_are_approximate_with_their_maxdiff():
    x, w, out, upstream = _tanh_layer()
    d_pre = (1 - out**2) * upstream
    other_order = (x.detach().T.double() @ d_pre.double()).float() * (1 + 1e-7)
    c = compare("d_w", other_order, w.grad, TOL)
    assert c.status == "approximate" and not c.exact and c.approximate
    assert 0 < c.maxdiff < 1e-5


def test_a_wrong_gradient_is_wrong_and_says_how_far_off():
    x, w, _out, upstream = _tanh_layer()
    c = compare("d_w", x.detach().T @ upstream, w.grad, TOL)  # forgot the tanh
    assert c.status == "wrong" and not c.approximate
    assert c.maxdiff == pytest.approx(float((x.detach().T @ upstream - w.grad).abs().max()), rel=1e-6)
    assert "d_w: off by up to" in c.message


def test_negative_zero_equals_zero():
    assert compare("d_b", torch.tensor([-0.0, 1.0]), torch.tensor([0.0, 1.0]), TOL).status == "exact"


def test_no_broadcasting_keepdim_shape_is_a_shape_error():
    expected = torch.ones(27)
    c = compare("d_b2", torch.ones(1, 27), expected, TOL)
    assert c.status == "shape" and not c.approximate and c.maxdiff is None
    assert (
        c.message
        == "d_b2: shape (1, 27), expected (27,) -- summed with keepdim=True where the variable has no such dimension?"
    )
    assert torch.allclose(torch.ones(1, 27), expected)  # what the lecture's cmp would have said


def test_missing_keepdim_is_a_shape_error_naming_the_fix():
    c = compare("d_bnmeani", torch.ones(64), torch.ones(1, 64), TOL)
    assert c.status == "shape" and "keepdim=True" in c.message


def test_transposed_is_named():
    c = compare("d_W1", torch.ones(64, 30), torch.ones(30, 64), TOL)
    assert c.message == "d_W1: shape (64, 30), expected (30, 64) -- transposed?"


def test_dtype_none_nan_and_non_tensors_each_have_their_status():
    expected = torch.zeros(3)
    assert compare("d_x", torch.zeros(3, dtype=torch.float64), expected, TOL).status == "dtype"
    assert compare("d_x", None, expected, TOL).status == "missing"
    assert compare("d_x", torch.tensor([0.0, float("nan"), 0.0]), expected, TOL).status == "not_finite"
    assert compare("d_x", torch.tensor([0.0, float("inf"), 0.0]), expected, TOL).status == "not_finite"
    assert compare("d_x", [0.0, 0.0, 0.0], expected, TOL).status == "not_tensor"
    assert (
        compare("d_x", NotTensor("of type list"), expected, TOL).message
        == "d_x is of type list; it must be a plain torch.Tensor"
    )
    assert compare("d_x", torch.zeros(3).to_sparse(), expected, TOL).status == "not_tensor"


class Agreeable(torch.Tensor):
    """A tensor subclass that claims to equal whatever it is compared with."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_lying_tensor_subclass_is_not_a_tensor():
    liar = torch.full((3,), 5.0).as_subclass(Agreeable)
    assert torch.allclose(liar, torch.zeros(3))  # it does lie
    c = compare("d_x", liar, torch.zeros(3), TOL)
    assert c.status == "not_tensor" and "subclass" in c.message and "Agreeable" in c.message


def test_an_answer_that_still_requires_grad_is_compared_by_value():
    x = torch.ones(3, requires_grad=True)
    assert compare("d_x", x * 1.0, torch.ones(3), TOL).status == "exact"


def test_zero_true_gradient_needs_an_absolute_tolerance_above_rounding_noise():
    noise = torch.tensor([1.4e-8, -9e-9, 3e-9])  # what autograd returns for d_b1 behind batchnorm
    zeros = torch.zeros(3)
    assert compare("d_b1", zeros, noise, TOL).status == "wrong"  # allclose's default atol flips
    assert compare("d_b1", zeros, noise, Tolerance(rtol=1e-5, atol=1e-6)).status == "approximate"
    one_row = torch.tensor([2.4e-3, -1e-3, 5e-4])  # a real mistake is orders of magnitude larger
    assert compare("d_b1", one_row, noise, Tolerance(rtol=1e-5, atol=1e-6)).status == "wrong"


def test_empty_tensors_compare_exact():
    assert compare("d_x", torch.zeros(0, 3), torch.zeros(0, 3), TOL).status == "exact"


def test_cmp_line_looks_like_the_lecture():
    exact = compare("d_logits", torch.ones(2), torch.ones(2), TOL)
    assert cmp_line("logits", exact) == "logits          | exact: True  | approximate: True  | maxdiff: 0.0"
    shape = compare("d_b2", torch.ones(1, 2), torch.ones(2), TOL)
    assert cmp_line("b2", shape).endswith(
        "| maxdiff: - | d_b2: shape (1, 2), expected (2,) -- summed with keepdim=True where the variable has no such dimension?"
    )
