"""Hints on their own: a reference, a typical mistake made of it, the sentence it must produce."""

from __future__ import annotations

import pytest
import torch

from grader.hints import diagnose, wrong_axis

g = torch.Generator().manual_seed(7)
N = 32
REF = torch.randn(N, 27, generator=g)
OTHER = torch.randn(N, 27, generator=g)
TARGETS = torch.randint(0, 27, (N,), generator=g)


def _at_targets(t: torch.Tensor, delta: float) -> torch.Tensor:
    out = t.clone()
    out[torch.arange(N), TARGETS] += delta
    return out


@pytest.mark.parametrize(
    "mistake, answer, hint",
    [
        ("sign", -REF, "the sign is flipped"),
        ("times n", REF * N, "times n (= 32)"),
        ("over n", REF / N, "times 1/n (= 1/32)"),
        ("bessel", REF * N / (N - 1), "times n/(n-1) (= 32/31)"),
        ("twice", REF * 2, "times 2:"),
        ("half", REF / 2, "times 1/2:"),
        ("zeros", torch.zeros_like(REF), "all zeros"),
        ("mix-up", OTHER, "equals the gradient d_other"),
        ("targets", _at_targets(REF, 1.0), "wrong exactly at the target entries"),
        ("one row", torch.cat([REF[:1] * 3, REF[1:]]), "wrong only in row 0 of 32"),
    ],
)
def test_a_typical_mistake_is_named(mistake, answer, hint):
    said = diagnose("d_x", answer, REF, others={"d_other": OTHER}, n=N, targets=TARGETS)
    assert hint in said, (mistake, said)


def test_a_branch_missing_its_other_path_is_named():
    part = torch.randn(N, 27, generator=g)
    said = diagnose("d_counts", part, part + OTHER, branches={"counts_sum": part}, n=N)
    assert said.startswith("it holds only the gradient flowing back from counts_sum")


@pytest.mark.parametrize(
    "answer",
    [
        REF + 0.01 * torch.randn(N, 27, generator=g),  # noise: nothing in particular
        REF * 1.37,  # a factor nobody writes
        REF + 1.0,  # shifted everywhere
    ],
)
def test_no_hint_when_nothing_matches_with_confidence(answer):
    assert diagnose("d_x", answer, REF, others={"d_other": OTHER}, n=N, targets=TARGETS) == ""


def test_a_sum_over_the_wrong_axis_is_named():
    assert wrong_axis((32,), (27,), 32).startswith("summed over the wrong axis")  # d_b2 = d_logits.sum(1)
    assert wrong_axis((32, 1), (1, 64), 32).startswith(
        "summed over the wrong axis"
    )  # d_bnbias = ....sum(1, keepdim=True)
    assert wrong_axis((64,), (32, 64), 32) == ""  # not a sum mistake


def test_no_hint_for_rounding_noise():
    # issue 19: float32 rounding amplified where sums cancel, 1e-6 where entries are 0.1, at a few target entries:
    # nothing to name, though only those entries are off
    noisy = _at_targets(REF, 1e-6 * float(REF.abs().max()))
    assert diagnose("d_x", noisy, REF, others={"d_other": OTHER}, n=N, targets=TARGETS) == ""
    assert "target entries" in diagnose("d_x", _at_targets(REF, 0.01), REF, n=N, targets=TARGETS)
