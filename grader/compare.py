"""Stage 5: compare one answer with its reference. Pure functions, no notebook in sight.

The three numbers of the lecture's `cmp` helper, made strict:

* `exact`: same shape, same dtype, every element equal (IEEE equality: -0.0 equals 0.0);
* `approximate`: same shape and dtype, and `torch.allclose` within the rubric's tolerance;
* `maxdiff`: the largest absolute difference, computed in float64.

Unlike `cmp`, nothing broadcasts: a `(1, 27)` answer for a `(27,)` gradient is a shape error, unless the
rubric's tolerance says `broadcast` (lecture notebooks): then it is credited with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grader.rubric import Tolerance
from grader.values import NotTensor
from grader.verdicts import PASSING, STATUSES  # noqa: F401 -- STATUSES: the ones `Comparison.status` takes


@dataclass(frozen=True)
class Comparison:
    """The verdict on one variable."""

    status: str
    """One of `STATUSES`."""
    exact: bool
    """Same shape, dtype and values."""
    approximate: bool
    """Same shape and dtype, and close within the tolerance."""
    maxdiff: float | None
    """Largest absolute difference, or None when the values cannot be compared."""
    message: str
    """One sentence for the student; empty for exact answers."""
    hint: str = ""
    """The likely mistake where one is named (`transposed?`, a factor, a sign...; see `grader.hints`), as
    data: the message says it too, but no decision reads the message."""
    factors: tuple[str, ...] = ()
    """Where the hint is a factor: every factor it could be, by symbol (`batch_size`, `sqrt(head_size)`), so
    that the runs of a notebook can agree on the ones that fit in all of them."""

    @property
    def passed(self) -> bool:
        """Whether the answer earns its points."""
        return self.status in PASSING

    @classmethod
    def failed(cls, status: str, message: str, hint: str = "") -> Comparison:
        """A verdict reached without comparing values (missing, an error, a shape...): no difference to give."""
        return cls(status=status, exact=False, approximate=False, maxdiff=None, message=message, hint=hint)

    @classmethod
    def equal(cls, maxdiff: float, warning: str = "") -> Comparison:
        """Same shape, dtype and values; `warning` says what was credited anyway (a broadcast shape)."""
        return cls(status="exact", exact=True, approximate=True, maxdiff=maxdiff, message=warning)

    @classmethod
    def close(cls, maxdiff: float, warning: str = "") -> Comparison:
        """Within the tolerance, not equal."""
        return cls(status="approximate", exact=False, approximate=True, maxdiff=maxdiff, message=warning)

    @classmethod
    def off(cls, maxdiff: float, message: str) -> Comparison:
        """Compared, and outside the tolerance by up to `maxdiff`."""
        return cls(status="wrong", exact=False, approximate=False, maxdiff=maxdiff, message=message)


def describe(value: object) -> str:
    """A few words naming what kind of object `value` is."""
    if isinstance(value, NotTensor):
        return value.description
    if isinstance(value, torch.Tensor):
        return f"a subclass of torch.Tensor ({type(value).__name__})"
    return f"of type {type(value).__name__}"


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    if len(got) == 2 and got == want[::-1]:
        return "transposed?"
    if math.prod(got) == math.prod(want) and same_but_ones(got, want):
        if len(got) > len(want):
            return "summed with keepdim=True where the variable has no such dimension?"
        return "keep the dimension (keepdim=True) so the shape matches the variable?"
    return ""


def same_but_ones(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether two shapes differ only by dimensions of size 1 (`(64,)` and `(1, 64)`)."""
    return [d for d in got if d != 1] == [d for d in want if d != 1]


def compare(
    name: str, actual: object, expected: torch.Tensor, tolerance: Tolerance, noun: str = "gradient"
) -> Comparison:
    """Compare the student's value `actual` for variable `name` with the reference `expected` (a `noun`:
    `gradient`, or `value` for a values exercise)."""
    if actual is None:
        return Comparison.failed(
            "missing", f"{name} is None: replace the stub with your {'gradient' if noun == 'gradient' else 'answer'}"
        )
    if type(actual) is not torch.Tensor:
        return Comparison.failed("not_tensor", f"{name} is {describe(actual)}; it must be a plain torch.Tensor")
    if actual.layout != torch.strided or actual.device.type != "cpu":
        return Comparison.failed(
            "not_tensor", f"{name} is a {actual.layout} tensor on {actual.device}; use a dense CPU tensor"
        )
    actual = actual.detach()
    got, want = tuple(actual.shape), tuple(expected.shape)
    warning = ""
    if got != want and tolerance.broadcast and same_but_ones(got, want):
        # the lecture's cmp compares with broadcasting: credit it as cmp would, and say how to match
        actual = actual.reshape(want)
        fix = "keepdim=True in the sum" if len(got) < len(want) else f"no keepdim, or .view{want}"
        warning = (
            f"{name}: shape {got} where the tensor is {want}; credited (the lecture's cmp broadcasts), "
            f"but use {fix} to match"
        )
    elif got != want:
        hint = _shape_hint(got, want)
        return Comparison.failed(
            "shape", f"{name}: shape {got}, expected {want}" + (f" -- {hint}" if hint else ""), hint
        )
    if actual.dtype != expected.dtype:
        return Comparison.failed("dtype", f"{name}: dtype {actual.dtype}, expected {expected.dtype}")
    finite = torch.isfinite(actual)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return Comparison.failed("not_finite", f"{name}: {bad} of {actual.numel()} elements are NaN or infinite")
    if torch.equal(actual, expected):  # (finite and equal: the difference is 0.0, no need to compute it)
        return Comparison.equal(0.0, warning)
    maxdiff = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    approximate = bool(torch.allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol))
    if approximate:
        return Comparison.close(maxdiff, warning)
    scale = float(expected.double().abs().max()) if expected.numel() else 0.0
    return Comparison.off(
        maxdiff,
        f"{name}: off by up to {maxdiff:.3g} where the {'gradient' if noun == 'gradient' else 'expected value'}'s "
        f"entries are up to {scale:.3g} in size",
    )


def cmp_line(name: str, result: Comparison) -> str:
    """One line in the style of the lecture's `cmp`: `logits | exact: True | approximate: True | maxdiff: 0.0`."""
    maxdiff = "-" if result.maxdiff is None else repr(result.maxdiff)
    line = f"{name:15s} | exact: {result.exact!s:5s} | approximate: {result.approximate!s:5s} | maxdiff: {maxdiff}"
    if result.status not in PASSING:
        line += f" | {result.message}"
    return line
