"""The verdicts: what grading one notebook comes to, as data every output reads.

A `Report` holds a `VariableResult` per graded variable, an `ExerciseResult` per exercise and a
`RunSummary` per run; `score` makes them, the outputs (text and JSON, the feedback page, JUnit, the
class files, the gradebooks) only read them. A `GradedRun` is one run with its values and reference,
what `score` judges and the feedback page draws. Guarantees:

* every type is a frozen dataclass; a `Report` holds plain data only (strings, numbers, and tuples and
  dataclasses of them): the JSON report is `dataclasses.asdict(report)`, so its fields are the schema;
* a decision reads the fields (`status`, `local_status`, `hint`, `points`), never a message: messages
  are for people;
* nothing here imports torch or runs anything: an output that only renders a report stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grader.runs import Captured, Key

STATUSES = (
    "exact",
    "approximate",
    "wrong",
    "shape",
    "dtype",
    "missing",
    "not_finite",
    "not_tensor",
    "error",
    "autograd_used",
    "suspicious",
)
"""Every status a variable can get; `exact` and `approximate` earn points."""
PASSING = ("exact", "approximate")

if TYPE_CHECKING:
    from grader.lecture import SavedCheck
    from grader.plan import Plan
    from grader.rubric import Rubric


@dataclass(frozen=True)
class VariableResult:
    """The verdict and points for one graded variable."""

    exercise: str
    """Exercise id, e.g. `ex1`."""
    name: str
    """The student's variable, e.g. `d_logits`."""
    of: str
    """The forward tensor it is the gradient of, e.g. `logits`."""
    status: str
    """One of `grader.compare.STATUSES`."""
    exact: bool
    """Same shape, dtype and values as the reference."""
    approximate: bool
    """Within the rubric's tolerance of the reference."""
    maxdiff: float | None
    """Largest absolute difference from the reference, when comparable."""
    points: float
    """Points earned."""
    max_points: float
    """Points available."""
    message: str
    """What is wrong, for the student; empty when full points."""
    runs: tuple[str, ...] = ()
    """The status in each run: the notebook's own parameters first, then the hidden re-runs."""
    local_status: str = ""
    """The status of this backward step judged on its own, from the student's own gradients of the
    tensors that use it (cascade-free); the same as `status` where that cannot be judged."""
    hint: str = ""
    """The likely mistake `message` names (`grader.hints`, e.g. "it is the right gradient times 2"), as
    data for class statistics; empty when the message names none."""


@dataclass(frozen=True)
class ExerciseResult:
    """Points for one exercise."""

    id: str
    """Exercise id."""
    score: float
    """Points earned."""
    max_score: float
    """Points available."""
    root_cause: str = ""
    """The first variable of the exercise whose own step is wrong, when it has later ones that are
    off only because of it."""


@dataclass(frozen=True)
class RunSummary:
    """How one run of the notebook went (hidden runs name no parameter values)."""

    label: str
    """`the notebook's parameters` or `hidden run N`."""
    status: str
    """`graded`, or `failed` when it did not run to the end."""
    error: str
    """Why it failed, or empty."""


@dataclass(frozen=True)
class Report:
    """The grade of one notebook."""

    assignment: str
    """Assignment name."""
    notebook: str
    """Path of the graded notebook, as given."""
    status: str
    """`graded`, or `failed` when the notebook could not run to the end."""
    error: str
    """Why it failed (one line), or empty."""
    score: float
    """Points earned."""
    max_score: float
    """Points available."""
    exercises: tuple[ExerciseResult, ...]
    """Per exercise."""
    variables: tuple[VariableResult, ...]
    """Per variable, in rubric order."""
    notes: tuple[str, ...]
    """What the grader changed in the notebook and which cells raised."""
    runs: tuple[RunSummary, ...] = ()
    """Each run: the notebook's parameters first, then the hidden re-runs."""
    peak_memory_mb: float = 0.0
    """Largest resident memory of any of its runs, in MB."""
    saved_checks: tuple[SavedCheck, ...] = ()
    """Lecture notebooks: their own saved `cmp` printouts beside the grader's verdicts."""


def ungradable(rubric: Rubric, notebook: str, reason: str) -> Report:
    """The report of a notebook that could not be graded at all: 0 for every variable, and why."""
    variables = tuple(
        VariableResult(
            ex.id, v.name, v.of, "error", False, False, None, 0.0, v.points, f"{v.name}: {reason}", local_status="error"
        )
        for ex in rubric.exercises
        for v in ex.graded
    )
    exercises = tuple(ExerciseResult(ex.id, 0.0, ex.max_score) for ex in rubric.exercises)
    return Report(rubric.assignment, notebook, "failed", reason, 0.0, rubric.max_score, exercises, variables, ())


@dataclass(frozen=True)
class GradedRun:
    """One run of the notebook, with what is needed to grade it."""

    label: str
    """How the report names the run, e.g. `hidden run 2`; hidden values never appear in it."""
    changed: tuple[str, ...]
    """Names of the parameters that differ from the notebook's own run."""
    plan: Plan
    """What was run."""
    captured: Captured
    """What came back."""
    reference: dict[Key, object]
    """The reference for this run's parameters: gradients by forward name, and the entries of the other keys."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    """The run's whole-number parameters (`n_embd` -> 16), for hints that name a factor by its parameter; never
    shown for a hidden run (its hints name only the notebook's own values)."""
