"""What a run can bring back for a variable besides a tensor or None (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass

MISSING = "missing"
"""Stands for a variable that was not defined at all (as opposed to defined as None)."""
UNCHANGED = "unchanged"
"""Stands for a variable that the exercise's answer cell did not (re)assign."""


@dataclass(frozen=True)
class NotTensor:
    """Stands for a value that came back from a run but was not a plain tensor."""

    description: str
    """What it was, in words, e.g. `a list` or `a MyTensor (a subclass of torch.Tensor)`."""


@dataclass(frozen=True)
class Flag:
    """A verdict reached without comparing values: the answer used autograd, or looked like it tried to."""

    status: str
    """`autograd_used` or `suspicious`."""
    reason: str
    """Why, for the report."""


@dataclass(frozen=True)
class Raised:
    """Stands for a recorded call of the student's function that raised."""

    error: str
    """`ExceptionType: message (line N)`."""
