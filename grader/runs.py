"""The types both sides of a run share: what a run brings back, and where its reference keeps each entry.

The sandbox (which runs student code) builds `Captured`; the reference (which runs the released cells)
fills a run's reference, a `dict[Key, object]`; the pure stages (compare, hints, score) read both.
Keeping the types here, in a module that imports nothing of the grader's, lets those stages depend on
neither side.

Guarantees:

* every type is a frozen dataclass: built once, read by every later stage, changed by none;
* a reference entry is found by a key whose type says what it holds (a forward tensor's plain name for
  autograd's gradient of it, a typed key for anything else), never by the format of a string: no code
  builds a reference key by hand or takes one apart;
* the same holds for what a run brings back (`Captured.values`): a variable after its answer cell is found
  under `(exercise, variable)`, a recorded call's inputs, weights, returns and error under a typed key. The
  one text form, the names in a run's result file, is made by `wire` and read by `unwire`, here and nowhere
  else; `unwire` takes any string the notebook's process could have written and gives a key or None.

Portable: the sandbox's results reader imports this module; nothing here may need more than the
standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CellOutcome:
    """How one planned cell went."""

    label: str
    """The cell's label, e.g. `cell 9 (ex1)`."""
    error: str
    """`ExceptionType: message (line N)`, or empty if the cell ran without raising."""
    line: int | None = None
    """The line of the cell the error was raised at, where it was raised in the cell's own code."""
    kind: str = ""
    """The exception's type name (`NameError`), or empty."""


@dataclass(frozen=True)
class Captured:
    """What came back from one run of a submission."""

    finished: bool
    """The child ran every cell and returned its values."""
    reason: str
    """Why not, naming the cell, when `finished` is False."""
    cells: tuple[CellOutcome, ...]
    """One per planned cell that ran (empty when not finished)."""
    values: dict[ValueKey, object]
    """`ValueKey` -> a tensor, None, `MISSING`, `UNCHANGED`, a `NotTensor`, a `Raised` or a `Flag`."""
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


# --- where a run's values are kept ------------------------------------------------------------------------------
# A variable after its answer cell, the entry most exercises read, is kept under `(exercise, variable)`; what a
# function exercise's recorded calls saw and did, under a key whose type says which.


@dataclass(frozen=True)
class CallArgument:
    """A positional argument of a recorded call of an answer's function, as it was before the call."""

    exercise: str
    """Exercise id."""
    call: int
    """Which call, 0 the first."""
    position: int
    """Which argument, 0 the first."""


@dataclass(frozen=True)
class CallWeight:
    """One of the weights (the rubric's `wrt` list) as it was before a recorded call of an answer's function."""

    exercise: str
    """Exercise id."""
    call: int
    """Which call, 0 the first."""
    position: int
    """Which weight in the list, 0 the first."""


@dataclass(frozen=True)
class CallReturned:
    """A value a recorded call of an answer's function returned, by the rubric's name for it."""

    exercise: str
    """Exercise id."""
    call: int
    """Which call, 0 the first."""
    name: str
    """The rubric's variable, e.g. `d_W1`."""


@dataclass(frozen=True)
class CallRaised:
    """The exception a recorded call of an answer's function raised (a `Raised`)."""

    exercise: str
    """Exercise id."""
    call: int
    """Which call, 0 the first."""


ValueKey = tuple[str, str] | CallArgument | CallWeight | CallReturned | CallRaised
"""Where a run's values keep an entry: `(exercise, variable)` for a variable, a typed key for a recorded call."""

# The text forms of the typed keys' last parts start with "!": no rubric variable (an identifier) can be one.
_ARGUMENT, _WEIGHT, _RAISED = "!arg", "!param", "!error"


def wire(key: ValueKey) -> str:
    """The name `key` has in a run's result file (a safetensors tensor name), read back by `unwire`."""
    if isinstance(key, CallArgument):
        return f"{key.exercise}/{key.call}/{_ARGUMENT}{key.position}"
    if isinstance(key, CallWeight):
        return f"{key.exercise}/{key.call}/{_WEIGHT}{key.position}"
    if isinstance(key, CallReturned):
        return f"{key.exercise}/{key.call}/{key.name}"
    if isinstance(key, CallRaised):
        return f"{key.exercise}/{key.call}/{_RAISED}"
    return f"{key[0]}/{key[1]}"


def _count(text: str) -> int | None:
    """A call's or a position's number as `wire` writes it (plain ASCII digits, no sign, no leading zero)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or str(int(text)) != text:
        return None
    return int(text)


def unwire(name: object) -> ValueKey | None:
    """The key a result file's `name` stands for, or None where it is none that `wire` makes (the file was
    written next to student code: anything may be in it)."""
    if not isinstance(name, str):
        return None
    parts = name.split("/")
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    call = _count(parts[1]) if len(parts) == 3 and parts[0] else None
    if call is None:
        return None
    exercise, rest = parts[0], parts[2]
    if rest == _RAISED:
        return CallRaised(exercise, call)
    if rest.isidentifier():
        return CallReturned(exercise, call, rest)
    for prefix, kind in ((_ARGUMENT, CallArgument), (_WEIGHT, CallWeight)):
        position = _count(rest.removeprefix(prefix)) if rest.startswith(prefix) else None
        if position is not None:
            return kind(exercise, call, position)
    return None


# --- where a run's reference keeps each entry ----------------------------------------------------------------
# A run's reference maps a `Key` to what the grader computed for it. Autograd's gradient of a graded forward
# tensor, the entry most exercises read, is kept under the tensor's own name (`"probs"`); every other entry
# under a key whose type says what it is.


@dataclass(frozen=True)
class ValueOf:
    """A variable of a values exercise: its value as the released reference cells or the solution compute it."""

    exercise: str
    """Exercise id, e.g. `ex5`."""
    of: str
    """The name the reference computes it under, e.g. `bnmean`."""


@dataclass(frozen=True)
class LocalGradient:
    """What a gradient should be given the student's own gradients of the tensors that use it (a tensor):
    its backward step judged on its own."""

    exercise: str
    """Exercise id: the student's gradients it starts from are those of this exercise's run."""
    of: str
    """The forward tensor, e.g. `counts`."""


@dataclass(frozen=True)
class GradientParts:
    """A forward tensor's gradient split by the tensors that use it (`{user: its part}`), for hints."""

    of: str
    """The forward tensor used by two or more others, e.g. `counts`."""


@dataclass(frozen=True)
class OperandHint:
    """A wrong gradient's mistake named in the student's own line (a str): one transpose or one sum's dimensions
    changed in it gives the right step."""

    exercise: str
    """Exercise id."""
    name: str
    """The student's variable, e.g. `d_k`."""


@dataclass(frozen=True)
class ReplayedCall:
    """Autograd's gradients at one recorded call of a function exercise's answer (a tuple of tensors), or why
    that call could not be replayed (a string)."""

    exercise: str
    """Exercise id."""
    call: int
    """Which call, 0 the first."""


@dataclass(frozen=True)
class TrainingResult:
    """The result of a function exercise's training run with autograd's gradients (a float64 tensor)."""

    exercise: str
    """Exercise id."""
    name: str
    """The variable the training leaves it in, e.g. `train_loss`."""


@dataclass(frozen=True)
class Targets:
    """The batch's target classes (a tensor), for hints about the target entries."""


TARGETS = Targets()
"""The one key of the batch's target classes."""

Key = str | ValueOf | LocalGradient | GradientParts | OperandHint | ReplayedCall | TrainingResult | Targets
"""Where a run's reference keeps an entry: a forward tensor's name (autograd's gradient of it), or a typed key."""


def answer_key(reference: Mapping[Key, object], exercise: str, of: str) -> Key:
    """Where `reference` keeps the reference of a graded variable known by its exercise and forward name only
    (as a report names it): its values exercise's entry where there is one, else the gradient of `of`."""
    value = ValueOf(exercise, of)
    return value if value in reference else of
