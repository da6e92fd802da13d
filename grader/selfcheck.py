"""`check()`: the self-check students call inside their notebook, like the lecture's `cmp`."""

from __future__ import annotations

import torch

from grader import rubric
from grader.compare import compare, cmp_line
from grader.rubric import Tolerance


def _tolerance_for(variable: str) -> Tolerance:
    # The rubric's tolerance for this variable, so that a self-check passes when the grader will pass it.
    found = {
        v.tolerance
        for name in rubric.known_assignments()
        for ex in rubric.load(name).exercises
        for v in ex.variables
        if v.name == variable
    }
    if not found:
        return Tolerance(rubric.DEFAULT_RTOL, rubric.DEFAULT_ATOL)
    # the same name in two exercises (d_C in Exercises 1 and 4): the looser tolerance
    return Tolerance(rtol=max(t.rtol for t in found), atol=max(t.atol for t in found))


def check(name: str, actual: object, tensor: torch.Tensor, tolerance: Tolerance | None = None) -> bool:
    """Print one cmp-style line comparing `actual` with `tensor.grad`; return whether it passes.

    Parameters
    ----------
    name: the label to print, e.g. `"logits"`.
    actual: your gradient, e.g. `d_logits`.
    tensor: the forward-pass tensor whose `.grad` PyTorch filled in, e.g. `logits`.
    tolerance: how close is close enough; by default the assignment's rubric for `d_<name>`.
    """
    expected = getattr(tensor, "grad", None)
    if not isinstance(expected, torch.Tensor):
        print(f"{name:15s} | no reference: {name}.grad is None -- run the forward pass and loss.backward() first")
        return False
    result = compare(f"d_{name}", actual, expected.detach(), tolerance or _tolerance_for(f"d_{name}"))
    print(cmp_line(name, result))
    return result.passed
