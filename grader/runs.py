"""The types both sides of a run share: what a run brings back, and where its reference is kept.

The sandbox (which runs student code) builds `Captured`; the reference (which runs the released cells)
fills a `Reference`; the pure stages (compare, hints, score) read both. Keeping the types here, in a
module that imports nothing of the grader's, lets those stages depend on neither side.

Guarantees:

* every type is a frozen dataclass: built once, read by every later stage, changed by none;
* a reference key names its kind by its type, never by the format of a string: two kinds of entry
  cannot be confused, and no code takes a key apart to find what it holds.

Portable: the sandbox's results reader imports this module; nothing here may need more than the
standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellOutcome:
    """How one planned cell went."""

    label: str
    """The cell's label, e.g. `cell 9 (ex1)`."""
    error: str
    """`ExceptionType: message (line N)`, or empty if the cell ran without raising."""


@dataclass(frozen=True)
class Captured:
    """What came back from one run of a submission."""

    finished: bool
    """The child ran every cell and returned its values."""
    reason: str
    """Why not, naming the cell, when `finished` is False."""
    cells: tuple[CellOutcome, ...]
    """One per planned cell that ran (empty when not finished)."""
    values: dict[tuple[str, str], object]
    """(exercise, variable) -> a tensor, None, `MISSING`, `UNCHANGED` or a `NotTensor`."""
    peak_memory_mb: float = 0.0
    """Largest resident memory of the run (its process under Linux; its whole process tree under the watchdog)."""
    notes: tuple[str, ...] = ()
    """What else the grader saw, e.g. processes the notebook left running."""
    done: tuple[str, ...] = ()
    """The exercises whose values came back: all of them when `finished`; those that ended before the run
    stopped otherwise (their values are in `values` and are graded; the others get `reason`)."""
    started: bool = True
    """False for a run that never began: an earlier run of its job ended their process first."""

    def reached(self, exercise: str) -> bool:
        """Whether the run's values for `exercise` came back: it ran to the end, or stopped after that exercise."""
        return self.finished or exercise in self.done
