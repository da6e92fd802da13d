"""Stage 5, beside compare: what a wrong gradient most likely is, in one sentence naming the mistake, or
nothing. Pure functions.

Each check compares the student's tensor with the reference (or with the references of the other
variables) and speaks only when the match is unmistakable: the student's values must equal the
transformed reference within a tolerance far tighter than the distance to the reference itself. A
wrong hint misleads more than none, so when nothing matches the message says only how far off it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import torch

from grader.compare import Comparison

MATCH_RTOL, MATCH_ATOL = 1e-4, 1e-7
"""How close a transformed reference must be to the answer for a hint to be given."""
NOISE = 1e-4
"""An answer off by no more than this fraction of the reference's largest entry is off by rounding (float32 sums
that cancel: 1e-6 where entries are 0.1): no mistake to name, whatever entries it shows at."""


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=MATCH_RTOL, atol=MATCH_ATOL))


def _factors(n: int | None) -> list[tuple[str, str, float]]:
    """Constant factors students get wrong, named as they would write them: (symbol, label, value)."""
    named = [("2", "2", 2.0), ("1/2", "1/2", 0.5), ("-2", "-2", -2.0), ("-1/2", "-1/2", -0.5)]
    if n and n > 1:
        named = [
            ("n", f"n (= {n})", float(n)),
            ("1/n", f"1/n (= 1/{n})", 1 / n),
            ("n/(n-1)", f"n/(n-1) (= {n}/{n - 1})", n / (n - 1)),
            ("(n-1)/n", f"(n-1)/n (= {n - 1}/{n})", (n - 1) / n),
            ("1/(n-1)", f"1/(n-1) (= 1/{n - 1})", 1 / (n - 1)),
            ("n-1", f"n-1 (= {n - 1})", float(n - 1)),
            ("n²", f"n² (= {n * n})", float(n * n)),
            ("1/n²", f"1/n² (= 1/{n * n})", 1 / (n * n)),
            *named,
        ]
    return named


def _size_factors(sizes: Mapping[str, int], shape: tuple[int, ...], n: int | None) -> list[tuple[str, str, float]]:
    """Factors made of the assignment's own sizes, (symbol, label, value): each parameter's value (named by its
    parameter: `head_size (= 16)`) and each dimension of the gradient no parameter names, as a factor, its
    inverse, its square root and its inverse; and, for a size that is a dimension of the gradient (a
    normalisation over it), v/(v-1) and (v-1)/v, Bessel's correction the wrong way round. (Any other size's
    v/(v-1) is too near 1 to tell from an arbitrary factor: 9/10 for a size of 10.)"""
    # (n has its own names, first; a size of 2 is the plain factor 2, which is named as such)
    named: dict[str, int] = {}
    for name, value in sizes.items():
        if type(value) is int and value > 2 and value != n:
            named[name] = value
    for axis, value in enumerate(shape):
        if value > 2 and value != n and value not in named.values():
            named[f"the size of dimension {axis}"] = value
    out = []
    for who, value in named.items():
        root = value**0.5
        out += [
            (who, f"{who} (= {value})", float(value)),
            (f"1/{who}", f"1/{who} (= 1/{value})", 1 / value),
            (f"sqrt({who})", f"sqrt({who}) (= {root:.4g})", root),
            (f"1/sqrt({who})", f"1/sqrt({who}) (= 1/{root:.4g})", 1 / root),
        ]
        if value in shape:
            out += [
                (f"{who}/({who}-1)", f"{who}/({who}-1) (= {value}/{value - 1})", value / (value - 1)),
                (f"({who}-1)/{who}", f"({who}-1)/{who} (= {value - 1}/{value})", (value - 1) / value),
            ]
    return out


def factor(
    c: float, n: int | None, sizes: Mapping[str, int], shape: tuple[int, ...], only: Collection[str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """The factors `c` could be, worded (`batch_size (= 4) or sqrt(head_size) (= 4)`), and their symbols; ("", ())
    where none fits. `only`: the symbols the other runs left (a candidate must fit in every run)."""
    found: list[tuple[str, str]] = []
    # the batch's n and the plain constants first: a size that only coincides with them (a dimension of 4 whose
    # square root is 2) is not named beside them
    for candidates in (_factors(n), _size_factors(sizes, shape, n)):
        found = found or [
            (symbol, label)
            for symbol, label, value in candidates
            if abs(c - value) <= 1e-4 * abs(value) and (only is None or symbol in only)
        ]
    if not found:
        return "", ()
    # the same value under several names: each named (a factor of 4 is batch_size, or sqrt(head_size)...)
    labels = list(dict.fromkeys(label for _, label in found))
    return " or ".join(labels), tuple(symbol for symbol, _ in found)


def _some_rows_or_columns(bad: torch.Tensor, targets: torch.Tensor | None) -> str:
    """Where a 2-D answer is wrong, when that is a telling part of it."""
    rows, cols = bad.shape
    if targets is not None and targets.shape == (rows,):
        at_targets = torch.zeros_like(bad)
        at_targets[torch.arange(rows), targets.long().clamp(0, cols - 1)] = True
        if bool((bad == at_targets).all()):
            return "wrong exactly at the target entries (row i, column Yb[i]) and right everywhere else"
        if bool(at_targets[bad].all()) and int(bad.sum()) < rows:
            return "wrong only at some of the target entries (row i, column Yb[i])"
    wrong_rows = torch.nonzero(bad.any(1)).flatten().tolist()
    wrong_cols = torch.nonzero(bad.any(0)).flatten().tolist()
    if not wrong_rows:  # (off only within the tolerance's rounding: nothing to point at)
        return ""
    if len(wrong_rows) <= min(3, rows // 4):
        return f"wrong only in row{'s' if len(wrong_rows) > 1 else ''} {', '.join(map(str, wrong_rows))} of {rows}"
    if len(wrong_cols) <= min(3, cols // 4):
        return f"wrong only in column{'s' if len(wrong_cols) > 1 else ''} {', '.join(map(str, wrong_cols))} of {cols}"
    return ""


def diagnose(
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    others: Mapping[str, torch.Tensor] | None = None,
    branches: Mapping[str, torch.Tensor] | None = None,
    n: int | None = None,
    targets: torch.Tensor | None = None,
    noun: str = "gradient",
    sizes: Mapping[str, int] | None = None,
    only: Collection[str] | None = None,
) -> str:
    """The likely mistake behind a wrong answer of the right shape and dtype, or "" when unsure.

    Parameters
    ----------
    name: the student's variable, e.g. `d_probs`.
    actual, expected: the answer and the reference (same shape and dtype, not close).
    others: references of the other variables of the exercise (`d_logits` -> tensor), for mix-ups.
    branches: for a variable with several uses, the part of its gradient that flows back from each
        use (`counts_sum` -> tensor): an answer equal to one of them misses the other paths.
    n: the batch size, to name factors such as 1/n.
    targets: the batch's target classes (`Yb`), to recognise mistakes only at the target entries.
    noun: what the answer is (`gradient`, or `value` for a values exercise: no talk of flowing back).
    sizes: the run's whole-number parameters (`n_embd` -> 16), to name a factor of a size by its parameter.
    only: the factors (by symbol) still possible after the other runs of the notebook; None: any.
    """
    a, e = actual.detach().double(), expected.detach().double()
    if a.numel() == 0 or rounding(a, e):
        return ""
    if not bool(a.any()):
        if noun != "gradient":
            return "it is all zeros (or all False): is it still a stub?"
        return "it is all zeros: is the gradient still a stub, or does nothing flow back into it?"
    if _close(a, -e):
        return "the sign is flipped"
    scale = float((e * e).sum())
    if scale > 0:
        c = float((a * e).sum()) / scale
        if _close(a, c * e):
            label, _ = factor(c, n, sizes or {}, tuple(e.shape), only)
            if label:
                return f"it is the right {noun} times {label}: a factor too many or too few?"
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and _close(a, e.transpose(-2, -1)):
        # (a square gradient: the shape cannot tell a transposed operand of a matrix product)
        return f"it is the transpose of the right {noun}: an operand of a matrix product transposed, or one missing?"
    for part, gradient in (branches or {}).items():
        if _close(a, gradient.double()):
            return (
                f"it holds only the gradient flowing back from {part}: the variable is used more than once, "
                f"so the gradients from each use must be added (+=)"
            )
    for other, gradient in (others or {}).items():
        if other != name and _close(a, gradient.double()):
            return f"it equals the gradient {other}: a mix-up of names?"
    if a.dim() == 2:
        bad = ~torch.isclose(a, e, rtol=MATCH_RTOL, atol=MATCH_ATOL)
        return _some_rows_or_columns(bad, targets)
    return ""


def _factor_symbols(
    actual: torch.Tensor, expected: torch.Tensor, n: int | None, sizes: Mapping[str, int], only: Collection[str] | None
) -> tuple[str, ...]:
    """The symbols of every factor `actual` is of `expected` (empty where it is no multiple of it)."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = float((e * e).sum())
    if scale <= 0 or a.shape != e.shape:
        return ()
    c = float((a * e).sum()) / scale
    return factor(c, n, sizes, tuple(e.shape), only)[1] if _close(a, c * e) else ()


def rounding(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether `actual` is off from `expected` (same shape) only as much as float32 rounding puts it off."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = float(e.abs().max()) if e.numel() else 0.0
    return scale > 0 and float((a - e).abs().max()) <= NOISE * scale


def missing_sum(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """For a shape mismatch: the answer is the right gradient before a sum over the dimensions a broadcast
    added (leading ones, or size-1 ones kept), of any rank; said only where the sum gives the right values."""
    a, e = actual.detach().double(), expected.detach().double()
    extra = a.dim() - e.dim()
    if extra < 0:
        return ""
    padded = (1,) * extra + tuple(e.shape)
    if any(w != 1 and w != g for g, w in zip(a.shape, padded)):
        return ""
    axes = [i for i, (g, w) in enumerate(zip(a.shape, padded)) if w == 1 and g != 1]
    if not axes:
        return ""
    summed = a.sum(dim=axes, keepdim=True).reshape(e.shape)
    if not _close(summed, e):
        return ""
    which = ", ".join(f"{i} (size {a.shape[i]})" for i in axes)
    return (
        f"the sum over dimension{'s' if len(axes) > 1 else ''} {which} is missing: the tensor was broadcast "
        "along them in the forward pass, so its gradient adds up what flows back along them"
    )


def wrong_axis(got: tuple[int, ...], want: tuple[int, ...], n: int | None) -> str:
    """For a shape mismatch: a sum over the batch's axis where another axis was meant, or the reverse."""
    if not n or got == want or len(got) > len(want):
        return ""
    if n in got and n not in want:
        return "summed over the wrong axis (this shape keeps the batch's n rows; the gradient sums over them)?"
    if n in want and n not in got and len(got) == len(want):
        return "summed over the batch (n rows) where another axis was meant?"
    return ""


def with_hint(
    result: Comparison,
    name: str,
    actual: object,
    expected: torch.Tensor,
    *,
    others: Mapping[str, torch.Tensor] | None = None,
    branches: Mapping[str, torch.Tensor] | None = None,
    n: int | None = None,
    targets: torch.Tensor | None = None,
    noun: str = "gradient",
    sizes: Mapping[str, int] | None = None,
    only: Collection[str] | None = None,
) -> Comparison:
    """`result` with the likely mistake named in its message, as every report words it (the grader's report and the
    self-check in the student's kernel): `d_W2: it is the right gradient times 2: ... (off by up to ...)`; a shape
    error gets the sum over the wrong axis. `result` itself where no hint is sure (see `diagnose`)."""
    if result.status == "wrong" and isinstance(actual, torch.Tensor):
        hint = diagnose(
            name,
            actual,
            expected,
            others=others,
            branches=branches,
            n=n,
            targets=targets,
            noun=noun,
            sizes=sizes,
            only=only,
        )
        if hint:
            return dataclasses.replace(
                named(result, name, hint), factors=_factor_symbols(actual, expected, n, sizes or {}, only)
            )
    elif result.status == "shape" and not result.hint and isinstance(actual, torch.Tensor):
        hint = missing_sum(actual, expected) or wrong_axis(tuple(actual.shape), tuple(expected.shape), n)
        if hint:
            return named(result, name, hint)
    return result


def named(result: Comparison, name: str, hint: str) -> Comparison:
    """`result` (wrong, or of the wrong shape) with `hint` as its likely mistake, worded as every report words it:
    `d_W2: <hint> (off by up to ...)`, `d_b: shape (4, 16), expected (16,) -- <hint>`."""
    if result.status == "shape":
        return dataclasses.replace(result, message=f"{result.message} -- {hint}", hint=hint)
    return dataclasses.replace(result, message=f"{name}: {hint} ({result.message.partition(': ')[2]})", hint=hint)
