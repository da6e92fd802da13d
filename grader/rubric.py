"""Stage 0: what to grade. The rubric's types, and parsing one (a TOML file beside its released notebook;
`grader.assignment` reads the file).

A rubric names the cells of the released notebook by their nbgrader `grade_id` and lists, per
exercise, the gradient variables to grade with their points and tolerances. Nothing else in the
grader knows anything about a particular assignment.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from grader.errors import RubricError
from grader.runs import Key, ValueOf

# The defaults of `torch.allclose`, which the lecture's `cmp` uses.
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8
DEFAULT_TIMEOUT = 60.0
DEFAULT_CELL_TIMEOUT = 30.0  # as nbgrader's per-cell default


class OfATensor(Protocol):
    """What names a graded tensor: a `Variable`, or a verdict on one (`verdicts.VariableResult`)."""

    @property
    def of(self) -> str: ...


@dataclass(frozen=True)
class Tolerance:
    """How close counts as `approximate`: |actual - expected| <= atol + rtol * |expected|."""

    rtol: float
    """Relative tolerance."""
    atol: float
    """Absolute tolerance."""
    broadcast: bool = False
    """Also credit an answer whose shape differs only by size-1 dimensions (as the lecture's `cmp`, which
    broadcasts, does), with a warning that names the fix."""


@dataclass(frozen=True)
class Variable:
    """One graded gradient, e.g. `d_logits`, the gradient of the loss with respect to `logits`."""

    name: str
    """The student's variable, e.g. `d_logits`."""
    of: str
    """The forward-pass tensor it is the gradient of, e.g. `logits`."""
    points: float
    """Points earned when the variable is exact or approximate."""
    tolerance: Tolerance
    """Tolerance for `approximate`."""


@dataclass(frozen=True)
class Training:
    """A short training run graded by its result against the same run with autograd."""

    cells: tuple[str, ...]
    """grade_ids of the released cells that train and evaluate."""
    result: Variable
    """The number they leave behind (e.g. `train_loss`), with its points and tolerance."""


@dataclass(frozen=True)
class Function:
    """An answer that is a function, graded on the calls the notebook makes to it."""

    name: str
    """The function the answer cell defines, e.g. `backward`."""
    forward: str
    """Released function `(Xb, Yb) -> (loss, ...)` whose gradients the answer must return."""
    wrt: str
    """Name of the list of tensors the gradients are of, in the order they are returned."""
    reference_cells: tuple[str, ...]
    """Released cells (after the setup cells) that define `forward` and `wrt`."""
    calls: tuple[int, ...]
    """Which calls (0 = the first) are graded."""
    training: Training | None
    """The training run to grade too, if any."""
    batch: tuple[str, ...] = ()
    """The minibatch's shape, each dimension named by a parameter or a name the reference cells define
    (`batch_size`, `block_size`): a recorded call with another input shape is not one of the training loop's,
    and is not replayed. Empty: any shape is replayed."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: an answer cell and the variables it must produce."""

    id: str
    """Exercise id, e.g. `ex1`."""
    cell: str
    """nbgrader `grade_id` of the answer cell."""
    variables: tuple[Variable, ...]
    """The variables graded, in the order the report lists them (for a function: what it returns)."""
    function: Function | None = None
    """Set when the answer is a function the notebook calls."""
    test_cell: str | None = None
    """nbgrader `grade_id` of the test cell that scores this exercise in nbgrader (worth `max_score`)."""
    given: str | None = None
    """The forward tensor whose gradient, as the student computed it in another exercise, the answer
    starts from (Exercise 3 starts from `d_hpreact`): its step is judged from that gradient too."""
    kind: str = "gradients"
    """`gradients`: each variable is the gradient of the loss with respect to its forward tensor `of`, from
    autograd. `values`: each variable is a value (a number, a tensor, a mask) compared with `of` as the
    `source` computes it."""
    source: str = "reference"
    """For `values`: `reference` (the released reference cells, e.g. torch's own BatchNorm1d) or `solution`
    (the instructor's solution notebook, run by the grader: for answers the release must not give away)."""

    @property
    def plain(self) -> bool:
        """Gradients of forward tensors, from autograd (not a function, not values)."""
        return self.function is None and self.kind == "gradients"

    def reference_key(self, var: OfATensor) -> Key:
        """Where a run's reference keeps `var`'s (a variable, or its verdict): under its forward tensor's name
        (autograd's gradient), or for a values exercise its own `ValueOf` key."""
        return var.of if self.kind == "gradients" else ValueOf(self.id, var.of)

    @property
    def graded(self) -> tuple[Variable, ...]:
        """Everything that earns points: the variables, then the training run's result if there is one."""
        training = self.function.training if self.function else None
        return self.variables + ((training.result,) if training else ())

    @property
    def max_score(self) -> float:
        """Points available in this exercise."""
        return sum(v.points for v in self.graded)


@dataclass(frozen=True)
class Rubric:
    """Everything the grader needs to know about one assignment."""

    assignment: str
    """Assignment name, as in the notebook metadata `grader.assignment`."""
    released: Path
    """The released (student) notebook: the source of locked cells and of the reference code."""
    timeout: float
    """Default wall-clock limit in seconds for each run of a submission (its own parameters, each hidden run)."""
    cell_timeout: float
    """Most seconds one cell may run before it is interrupted (KeyboardInterrupt) and the run goes on with
    the next; a cell gets at most half of its run's time, whatever this says."""
    loss: str
    """Name of the scalar the gradients are of."""
    setup_cells: tuple[str, ...]
    """grade_ids of the released cells that build the data; run once per `setup_parameters` values."""
    setup_parameters: tuple[str, ...]
    """The only parameters the setup cells read."""
    reference_cells: tuple[str, ...]
    """grade_ids of the released cells the grader runs itself (with autograd) for the reference."""
    no_grad_cells: tuple[str, ...]
    """grade_ids of cells run with autograd switched off while grading (no graph to call .backward on)."""
    skip_cells: tuple[str, ...]
    """grade_ids of cells never run while grading (autograd's backward pass, self-checks)."""
    data: dict[str, str]
    """Parameter name -> data file (in the data folder) the grader points that parameter at."""
    exercises: tuple[Exercise, ...]
    """The graded exercises, in notebook order."""
    hidden_runs: tuple[dict[str, object], ...] = ()
    """Parameter overrides of the re-runs a variable must also pass (the published defaults)."""
    grading_parameters: dict[str, object] | None = None
    """Parameters the grader always sets (e.g. a short training run)."""
    targets: str | None = None
    """Name of the batch's target classes in the forward pass (e.g. `Yb`), for hints; its length is n."""
    credit: str = "local"
    """`local`: a gradient earns its points when its own step is right, even if an earlier one is wrong
    (cascade-free); `chain`: only when its value is right."""
    forbidden: tuple[str, ...] = ()
    """Names answer cells may not use (`batch_norm`, `clip_grad_norm_`): what the exercise asks to write by hand."""

    @property
    def reads_solution(self) -> bool:
        """Whether a values exercise takes its reference from the instructor's solution (`source = "solution"`)."""
        return any(ex.kind == "values" and ex.source == "solution" for ex in self.exercises)

    @property
    def max_score(self) -> float:
        """Points available in the assignment."""
        return sum(e.max_score for e in self.exercises)


def parse(raw: dict, path: Path, released: Path | None = None) -> Rubric:
    """Build a `Rubric` from the parsed TOML of the file at `path`. `released`: where the student notebook is,
    for an assignment folder (default: the `notebook` the rubric names, beside it)."""
    _known_keys(raw, path)
    _shapes(raw, path)
    where = "at the top level"  # (for the message: the table being read)
    try:
        default_tol = Tolerance(
            rtol=float(raw.get("tolerance", {}).get("rtol", DEFAULT_RTOL)),
            atol=float(raw.get("tolerance", {}).get("atol", DEFAULT_ATOL)),
            broadcast=_flag(raw.get("tolerance", {}).get("broadcast", False), path, "tolerance.broadcast"),
        )
        overrides: dict = raw.get("variable", {})
        exercises = []
        for ex in raw["exercise"]:
            where = f"in exercise {ex['id']!r}"
            exercises.append(_exercise(ex, default_tol, overrides, path))
        where = "at the top level"
        _graded_overrides(overrides, exercises, path)
        if released is None:
            released = path.with_name(raw["notebook"])
            if released.parent != path.parent:
                raise RubricError(f"{path}: the released notebook must sit beside the rubric")
        return Rubric(
            assignment=raw["assignment"],
            released=released,
            timeout=float(raw.get("timeout", DEFAULT_TIMEOUT)),
            cell_timeout=float(raw.get("cell_timeout", DEFAULT_CELL_TIMEOUT)),
            loss=raw["loss"],
            setup_cells=tuple(raw.get("setup_cells", ())),
            setup_parameters=tuple(raw.get("setup_parameters", ())),
            reference_cells=tuple(raw["reference_cells"]),
            no_grad_cells=tuple(raw.get("no_grad_cells", ())),
            skip_cells=tuple(raw.get("skip_cells", ())),
            data=dict(raw.get("data", {})),
            exercises=tuple(exercises),
            hidden_runs=hidden_runs(raw, path),
            grading_parameters=dict(raw.get("grading_parameters", {})),
            targets=raw.get("targets"),
            credit=_credit(raw.get("credit", "local"), path),
            forbidden=tuple(raw.get("forbidden", ())),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise RubricError(f"{path}: malformed rubric {where} ({what})") from e


def _exercise(ex: dict, default_tol: Tolerance, overrides: dict, path: Path) -> Exercise:
    """One [[exercise]] table (`parse` names it in the message of what it raises)."""
    # an exercise may set its own default tolerance; [variable.NAME] still overrides it
    ex_tol = Tolerance(
        rtol=float(ex.get("rtol", default_tol.rtol)),
        atol=float(ex.get("atol", default_tol.atol)),
        broadcast=default_tol.broadcast,
    )
    kind = ex.get("kind", "gradients")
    if kind not in ("gradients", "values") or ex.get("source", "reference") not in ("reference", "solution"):
        raise RubricError(
            f"{path}: exercise {ex.get('id')}: kind must be gradients or values, source reference or solution"
        )
    variables = []
    for name in ex["variables"]:
        o = overrides.get(name, {})
        variables.append(
            Variable(
                name=name,
                of=o.get("of", name.removeprefix("d_") if kind == "gradients" else name),
                points=float(o.get("points", 1)),
                tolerance=Tolerance(
                    rtol=float(o.get("rtol", ex_tol.rtol)),
                    atol=float(o.get("atol", ex_tol.atol)),
                    broadcast=ex_tol.broadcast,
                ),
            )
        )
    function = _function(ex, default_tol) if "function" in ex else None
    return Exercise(
        id=ex["id"],
        cell=ex.get("cell", ex["id"]),
        variables=tuple(variables),
        function=function,
        test_cell=ex.get("test_cell"),
        given=ex.get("given"),
        kind=kind,
        source=ex.get("source", "reference"),
    )


def _function(ex: dict, default_tol: Tolerance) -> Function:
    """The function an exercise's answer defines, and the training run that calls it."""
    training = None
    if "training" in ex:
        t = ex["training"]
        result = Variable(
            name=t["result"],
            of=t["result"],
            points=float(t.get("points", 1)),
            tolerance=Tolerance(rtol=float(t.get("rtol", default_tol.rtol)), atol=float(t.get("atol", 0.0))),
        )
        training = Training(cells=tuple(t["cells"]), result=result)
    return Function(
        name=ex["function"],
        forward=ex["forward"],
        wrt=ex["wrt"],
        reference_cells=tuple(ex["reference_cells"]),
        calls=tuple(int(c) for c in ex["calls"]),
        training=training,
        batch=tuple(str(b) for b in ex.get("batch", ())),
    )


def _graded_overrides(overrides: dict, exercises: list[Exercise], path: Path) -> None:
    """Raise `RubricError` for a [variable.NAME] table of a variable no exercise grades (a typo, most likely)."""
    graded = [v.name for e in exercises for v in e.variables]
    for name in sorted(set(overrides) - set(graded)):
        close = closest(name, graded)
        also = f"did you mean [variable.{close}]? " if close else ""
        raise RubricError(
            f"{path}: [variable.{name}]: {name} is not a graded variable; {also}the graded ones are {', '.join(graded)}"
        )


# Every key a rubric may hold, with what it means: `grader validate` and parse refuse any other (a typo such as
# `credits = "chain"` would otherwise be ignored, and every student graded by the default). The rubric
# reference in docs/ is generated from these tables, so it cannot drift from what parse reads.
TOP_KEYS = {
    "assignment": "the assignment's name, as notebook metadata names it (default: the folder's name)",
    "notebook": "the student notebook's file name, beside a shipped rubric (default: NAME.ipynb)",
    "loss": 'the scalar every gradient is of (default: "loss")',
    "timeout": f"seconds of wall-clock time for each run of a submission (default: {DEFAULT_TIMEOUT:g})",
    "cell_timeout": f"seconds one cell may run before it is interrupted (default: {DEFAULT_CELL_TIMEOUT:g})",
    "credit": '"local" (default): a gradient earns its points when its own step is right, even after an earlier '
    'mistake; "chain": only when its value is right',
    "targets": "the forward pass's target classes (e.g. Yb), for hints that name the target entries",
    "forbidden": "names answer cells may not use (e.g. PyTorch's own layer the exercise asks to write)",
    "setup_cells": "grade_ids of locked cells that build the data, run once per value of setup_parameters",
    "setup_parameters": "the only parameters the setup cells read",
    "reference_cells": "grade_ids of locked cells the grader runs with autograd for the reference "
    "(default: the locked code cells before the first answer cell, bar setup and test cells)",
    "no_grad_cells": "grade_ids of cells run with autograd off while grading (default: none; answer cells never "
    "have autograd)",
    "skip_cells": "grade_ids of cells never run while grading (default: nbgrader test cells and cells that "
    "call .backward())",
    "data": "table: parameter = data file beside the rubric that the grader points the parameter at",
    "tolerance": "table: rtol, atol (torch.allclose's defaults), broadcast (credit size-1 dimension slips)",
    "variable": "tables [variable.d_x]: of, points, rtol, atol of one variable",
    "grading_parameters": "table: parameters the grader always sets (e.g. a short training run)",
    "hidden_run": "tables [[hidden_run]]: parameter values of one more run a variable must also pass",
    "exercise": "tables [[exercise]]: one per answer cell (see the exercise keys)",
}
EXERCISE_KEYS = {
    "id": "the exercise's id (required)",
    "cell": "grade_id of its answer cell (default: the id)",
    "variables": "the variables graded (default: the d_ names its answer cell assigns)",
    "test_cell": "grade_id of its nbgrader test cell (default: the test cell after the answer cell)",
    "rtol": "the exercise's relative tolerance",
    "atol": "the exercise's absolute tolerance",
    "given": "the forward tensor whose gradient, from another exercise, this one starts from",
    "kind": '"gradients" (default) or "values"',
    "source": 'for values: "reference" (released cells) or "solution" (the instructor\'s solution, run by the grader)',
    "function": "an answer that is a function: its name",
    "forward": "for a function: the released function (Xb, Yb) -> (loss, ...) it is the backward pass of",
    "wrt": "for a function: the list of tensors its gradients are of",
    "reference_cells": "for a function: released cells that define forward and wrt",
    "calls": "for a function: which calls (0 = the first) are graded",
    "batch": "for a function: the minibatch's shape by parameter names; a call with another batch is not replayed",
    "training": "for a function: table {cells, result, points, rtol, atol}: a training run graded by its result",
}
VARIABLE_KEYS = {
    "of": "the forward tensor it is the gradient of (default: the name without d_)",
    "points": "(1)",
    "rtol": "relative tolerance",
    "atol": "absolute tolerance",
}
TRAINING_KEYS = {
    "cells": "released cells that train",
    "result": "the number they leave",
    "points": "(1)",
    "rtol": "relative tolerance",
    "atol": "absolute tolerance (0)",
}
TOLERANCE_KEYS = {"rtol": "relative (1e-5)", "atol": "absolute (1e-8)", "broadcast": "true or false (false)"}


def closest(word: str, options: list[str]) -> str | None:
    """The option `word` is most likely a slip for: one that differs only in case, else the closest spelling."""
    same = [o for o in options if o.lower() == word.lower()]
    if same:
        return same[0]
    lowered = {o.lower(): o for o in options}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[found[0]] if found else None


def _unknown(keys: object, known: dict[str, str], where: str) -> list[str]:
    """A sentence per key of the table `keys` that `known` lacks, naming it and the key it most resembles."""
    if not isinstance(keys, dict):
        return []  # (`_shapes` names what is not a table)
    found = []
    for key in keys:
        if key not in known:
            close = closest(str(key), list(known))
            also = f"did you mean {close!r}? " if close else ""
            found.append(f"unknown key {key!r} {where}; {also}the keys there are {', '.join(known)}")
    return found


def _known_keys(raw: dict, path: Path) -> None:
    """Refuse every key the rubric's format does not have, naming each and the key it could be."""
    found = _unknown(raw, TOP_KEYS, "at the top level") + _unknown(
        raw.get("tolerance", {}), TOLERANCE_KEYS, "in [tolerance]"
    )
    variables = raw.get("variable", {})
    for name, table in variables.items() if isinstance(variables, dict) else ():
        found += _unknown(table, VARIABLE_KEYS, f"in [variable.{name}]")
    exercises = raw.get("exercise", [])
    for number, ex in enumerate(exercises if isinstance(exercises, list) else (), start=1):
        where = f"in exercise {ex.get('id')!r}" if isinstance(ex, dict) and "id" in ex else f"in [[exercise]] {number}"
        found += _unknown(ex, EXERCISE_KEYS, where)
        if isinstance(ex, dict):
            found += _unknown(ex.get("training", {}), TRAINING_KEYS, f"{where}, [exercise.training]")
    if found:
        raise RubricError(f"{path}: " + "; ".join(found))


_LISTS = ("setup_cells", "setup_parameters", "reference_cells", "no_grad_cells", "skip_cells", "forbidden")


def _shapes(raw: dict, path: Path) -> None:
    """The tables and lists `parse` reads, checked first: a rubric edited by hand gets a message naming the one that
    is not what it should be, not a Python error from deep inside `parse`."""
    for key in ("tolerance", "variable", "grading_parameters", "data"):
        if not isinstance(raw.get(key, {}), dict):
            raise RubricError(f"{path}: [{key}] must be a table, not {raw[key]!r}")
    for name, table in raw.get("variable", {}).items():
        if not isinstance(table, dict):
            raise RubricError(f"{path}: [variable.{name}] must be a table, not {table!r}")
    for key in _LISTS:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RubricError(f"{path}: {key} must be a list of strings, not {value!r}")
    exercises = raw.get("exercise")
    if not isinstance(exercises, list) or not exercises or not all(isinstance(e, dict) for e in exercises):
        raise RubricError(f"{path}: the rubric needs [[exercise]] tables, one per exercise")
    for number, ex in enumerate(exercises, start=1):
        where = f"exercise {ex['id']!r}" if isinstance(ex.get("id"), str) else f"[[exercise]] {number}"
        if not isinstance(ex.get("id"), str):
            raise RubricError(f"{path}: {where}: id must be a string, not {ex.get('id')!r}")
        variables = ex.get("variables")
        if not isinstance(variables, list) or not all(isinstance(v, str) and v for v in variables):
            raise RubricError(f"{path}: {where}: variables must be a list of names, not {variables!r}")
        if not isinstance(ex.get("training", {}), dict):
            raise RubricError(f"{path}: {where}: [exercise.training] must be a table, not {ex['training']!r}")


def _flag(value: object, path: Path, key: str) -> bool:
    if not isinstance(value, bool):
        raise RubricError(f"{path}: {key} must be true or false, not {value!r}")
    return value


def _credit(value: object, path: Path) -> str:
    if value not in ("local", "chain"):
        raise RubricError(f'{path}: credit must be "local" or "chain", not {value!r}')
    return str(value)


def hidden_runs(raw: dict, path: Path) -> tuple[dict[str, object], ...]:
    """The `[[hidden_run]]` tables of a parsed TOML file: parameter overrides, one table per run."""
    runs = raw.get("hidden_run", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) and r for r in runs):
        raise RubricError(f"{path}: [[hidden_run]] must be tables of parameter values")
    for i, run in enumerate(runs, start=1):
        for key, value in run.items():
            # what the notebook's parameters cell can hold: the grader writes each as `key = value!r`
            if type(value) not in (bool, int, float, str):
                raise RubricError(f"{path}: hidden run {i}: {key} = {value!r} is not a number, a string or true/false")
            if type(value) is float and not math.isfinite(value):
                raise RubricError(f"{path}: hidden run {i}: {key} = {value!r} is not a finite number")
    return tuple(dict(r) for r in runs)
