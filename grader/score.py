"""Stage 6: turn what came back from a run into points: the credit rules. A pure function of its inputs.

`score()` judges every graded variable in every run and returns a `Report` (the verdict types are in
`grader.verdicts`, which every output reads).
"""

from __future__ import annotations

import ast
import dataclasses

import torch

from grader.compare import Comparison, compare
from grader.hints import named, rounding, with_hint
from grader.plan import Plan
from grader.rubric import Exercise, Rubric, Variable
from grader.runs import (
    TARGETS,
    CallArgument,
    CallRaised,
    CallReturned,
    CallWeight,
    Captured,
    GradientParts,
    LocalGradient,
    OperandHint,
    ReplayedCall,
    TrainingResult,
)
from grader.scan import as_python, scan, scan_forbidden
from grader.values import MISSING, UNCHANGED, Flag, Raised
from grader.verdicts import PASSING, ExerciseResult, GradedRun, Report, RunSummary, VariableResult


def _span_errors(plan: Plan, captured: Captured, exercise: str) -> list[str]:
    """Errors of the cells from the exercise's answer cell up to its capture, the answer cell's first."""
    cap = next(c for c in plan.captures if c.exercise == exercise)
    span = list(captured.cells[cap.start : cap.before])
    span.sort(key=lambda o: o is not captured.cells[cap.start])
    return [f"{o.label} raised {o.error}" for o in span if o.error]


def _scan_flags(plan: Plan, ex: Exercise, forbidden: tuple[str, ...] = ()) -> dict[str, Flag]:
    """Variable -> the first finding of the static scan of the exercise's answer cell that concerns it."""
    cap = next((c for c in plan.captures if c.exercise == ex.id), None)
    if cap is None:
        return {}
    # the answer cell; in a lecture notebook, every cell of the exercise's section
    cells = [c for c in plan.cells[cap.start : cap.before] if c.grade_id == ex.cell] or [plan.cells[cap.start]]
    names = [v.name for v in ex.graded]
    flags: dict[str, Flag] = {}
    # Tricks that hide code (exec, computed getattr, private torch APIs) count wherever the student put
    # them; plain autograd use counts in the answer cell (a scratch cell may print a .grad; at run time
    # the guard refuses autograd in every cell the student wrote anyway).
    answers = {c.start for c in plan.captures}
    elsewhere = [
        (c, f)
        for i, c in enumerate(plan.cells)
        if c.guarded and i not in answers
        for f in (*scan(c.source), *scan_forbidden(c.source, forbidden))
        if f.status == "suspicious"
    ]
    found = [(cell, f) for cell in cells for f in scan(cell.source)]
    found += [(cell, f) for cell in cells for f in scan_forbidden(cell.source, forbidden)]
    for where, f in sorted(found, key=lambda cf: cf[1].line) + elsewhere:
        # a finding in a statement that assigns graded variables concerns those; anywhere else, all of them
        concerned = [n for n in names if n in f.targets] if any(where is c for c in cells) else []
        rule = (
            "autograd is not allowed in this exercise"
            if f.status == "autograd_used"
            else "this assignment asks you to write it yourself"
            if f.forbidden
            else "code that could hide autograd is not allowed in graded notebooks"
        )
        for n in concerned or names:
            flags.setdefault(n, Flag(f.status, f"line {f.line} of {where.label} uses {f.what}: {rule}"))
    return flags


def _verdict(
    ex: Exercise, var: Variable, run: GradedRun, flags: dict[str, Flag], only: frozenset[str] | None = None
) -> Comparison:
    plan, captured = run.plan, run.captured
    found = any(c.exercise == ex.id for c in plan.captures)
    value = captured.values.get((ex.id, var.name), MISSING)
    flag = flags.get(var.name) or (value if isinstance(value, Flag) else None)
    if not captured.reached(ex.id):
        return Comparison.failed("error", f"{var.name}: the notebook did not run to the end ({captured.reason})")
    unfound = {(e, v): why for e, v, why in plan.unfound}
    if (ex.id, "") in unfound or (ex.id, var.name) in unfound:
        return Comparison.failed("missing", f"{var.name}: {unfound.get((ex.id, var.name)) or unfound[(ex.id, '')]}")
    if not found:
        return Comparison.failed(
            "missing",
            f"{var.name}: the notebook has no answer cell {ex.cell} (was it deleted, or its metadata lost?)",
        )
    if flag is not None:
        return Comparison.failed(flag.status, f"{var.name}: {flag.reason}")
    errors = _span_errors(plan, captured, ex.id)
    if value is MISSING or value is UNCHANGED or (value is None and errors):
        if errors:
            return Comparison.failed("error", f"{var.name} was not computed: {errors[0]}")
        if value is UNCHANGED:
            return Comparison.failed("missing", f"{var.name} was not assigned in the {ex.cell} answer cell")
        return Comparison.failed("missing", f"{var.name} is not defined")
    reference = run.reference.get(ex.reference_key(var))
    if not isinstance(reference, torch.Tensor):
        return Comparison.failed("error", f"{var.name}: no reference here ({reference or 'none'})")
    noun = "gradient" if ex.kind == "gradients" else "value"
    if ex.kind == "values":
        value = as_number(value, reference)
    result = compare(var.name, value, reference, var.tolerance, noun)
    if result.status not in ("wrong", "shape"):
        return result
    parts = run.reference.get(GradientParts(var.of)) if ex.plain else None
    # (values are not checked for a mix-up of names: two values of an exercise can be equal by design)
    others = (
        {v.name: r for v in ex.variables if isinstance(r := run.reference.get(ex.reference_key(v)), torch.Tensor)}
        if ex.plain
        else None
    )
    hinted = with_hint(
        result,
        var.name,
        value,
        reference,
        others=others,
        branches=parts if isinstance(parts, dict) else None,
        n=_n(run),
        targets=_targets(run),
        noun=noun,
        sizes=run.sizes,
        only=only,
    )
    return _own_line_hint(hinted, ex, var, run)


def _own_line_hint(result: Comparison, ex: Exercise, var: Variable, run: GradedRun) -> Comparison:
    """`result` with the mistake named in the student's own line (`grader.reference.operands`) where the values
    named none."""
    hint = run.reference.get(OperandHint(ex.id, var.name))
    if result.status not in ("wrong", "shape") or result.hint or not isinstance(hint, str):
        return result
    return named(result, var.name, hint)


def _agreed_factors(verdicts: list[Comparison]) -> frozenset[str] | None:
    """The factors (by symbol) that every run's verdict could be, where the first is a factor and another run's
    verdict narrows it; None where nothing narrows it."""
    first = set(verdicts[0].factors)
    if not first:
        return None
    agreed = first.intersection(*(v.factors for v in verdicts[1:] if v.factors))
    return frozenset(agreed) if agreed != first else None


def as_number(value: object, reference: torch.Tensor) -> object:
    """A one-element floating answer as the float64 scalar a numeric reference is (`tensor([3.29])`, a float32
    scalar and a Python float all answer "3.29")."""
    if (
        reference.ndim == 0
        and reference.dtype == torch.float64
        and type(value) is torch.Tensor
        and value.is_floating_point()
        and value.numel() == 1
    ):
        return value.detach().double().reshape(())
    return value


def _local_verdict(ex: Exercise, var: Variable, run: GradedRun, plain: Comparison) -> Comparison:
    """The step judged on its own: the answer against what it should be given the student's gradients
    of the tensors that use it. The plain verdict where that cannot be judged or does not differ."""
    if plain.status != "wrong":
        return plain
    local = run.reference.get(LocalGradient(ex.id, var.of))
    value = run.captured.values.get((ex.id, var.name))
    if not isinstance(local, torch.Tensor) or type(value) is not torch.Tensor:
        return plain
    reference = run.reference.get(var.of)
    if (
        not bool(value.any())
        and isinstance(reference, torch.Tensor)
        and bool(reference.abs().gt(var.tolerance.atol).any())
    ):
        return plain  # zeros all the way down are "consistent" too: they never earn a step's credit
    result = compare(var.name, value, local, var.tolerance)
    if result.status != "wrong":
        return result
    if _below_a_mistake(ex, var, run) and rounding(value, local):
        # below a mistake the values are not those the tolerance was set for (32 times larger, say): a step
        # off from its own reference by float32 rounding alone is right (where the gradients it was computed
        # from are right, the tolerance alone decides: a small slip of its own is not rounding)
        return dataclasses.replace(result, status="approximate", approximate=True, message="")
    # the step's own mistake
    hinted = with_hint(result, var.name, value, local, n=_n(run), targets=_targets(run), sizes=run.sizes)
    return _own_line_hint(hinted, ex, var, run)


def _below_a_mistake(ex: Exercise, var: Variable, run: GradedRun) -> bool:
    """Whether the gradients this step was computed from are wrong (its local reference is not the reference)."""
    local, reference = run.reference.get(LocalGradient(ex.id, var.of)), run.reference.get(var.of)
    if not isinstance(local, torch.Tensor) or not isinstance(reference, torch.Tensor):
        return False
    return not torch.allclose(local, reference, rtol=var.tolerance.rtol, atol=var.tolerance.atol)


def _targets(run: GradedRun) -> torch.Tensor | None:
    targets = run.reference.get(TARGETS)
    return targets if isinstance(targets, torch.Tensor) else None


def _n(run: GradedRun) -> int | None:
    targets = _targets(run)
    return targets.numel() if targets is not None else None


def _function_verdict(ex: Exercise, j: int, var: Variable, run: GradedRun, flags: dict[str, Flag]) -> Comparison:
    """A value the answer's function returned: right at every recorded call, or the first call it is not."""
    captured = run.captured
    if not captured.reached(ex.id) or not any(c.exercise == ex.id for c in run.plan.captures):
        return _verdict(ex, var, run, flags)
    flag = flags.get(var.name)
    if flag is not None:
        return Comparison.failed(flag.status, f"{var.name}: {flag.reason}")
    function = ex.function
    assert function is not None  # (called for a function exercise only)
    fn = function.name
    verdicts: list[Comparison] = []
    for call in function.calls:
        step = "the first step" if call == 0 else f"step {call + 1}, after the weights moved"
        raised = captured.values.get(CallRaised(ex.id, call))
        value = captured.values.get(CallReturned(ex.id, call, var.name), MISSING)
        ref = run.reference.get(ReplayedCall(ex.id, call))
        if isinstance(raised, Raised):
            v = Comparison.failed("error", f"{var.name}: {fn}() raised {raised.error} at {step}")
        elif value is MISSING:
            errors = _span_errors(run.plan, captured, ex.id)
            why = f": {errors[0]}" if errors else ""
            v = Comparison.failed("missing", f"{var.name}: {fn}() was not called {call + 1} times{why}")
        elif isinstance(value, Flag):
            v = Comparison.failed(value.status, f"{var.name}: {value.reason}")
        elif not isinstance(ref, tuple):
            why = ref if isinstance(ref, str) and ref else "no reference"
            v = Comparison.failed("error", f"{var.name}: at {step}, {why}")
        else:
            c = compare(var.name, value, ref[j], var.tolerance)
            # the hints check_training prints too: the other parameters' gradients at this call, and its batch
            batch = captured.values.get(CallArgument(ex.id, call, 1))
            c = with_hint(
                c,
                var.name,
                value,
                ref[j],
                n=_n(run),
                targets=batch if type(batch) is torch.Tensor else None,
                others={v.name: r for v, r in zip(ex.variables, ref) if isinstance(r, torch.Tensor)},
            )
            message = c.message
            if not c.passed and len(verdicts) and verdicts[0].passed:
                detail = c.message.removeprefix(var.name + ": ")
                message = f"{var.name} is right at the first step but not at {step}: {detail}"
            elif not c.passed:
                message = f"{c.message} (at {step})"
            v = dataclasses.replace(c, message=message)
        verdicts.append(v)
        if not v.passed:
            return v
    return verdicts[0]


def _training_verdict(ex: Exercise, run: GradedRun, flags: dict[str, Flag]) -> Comparison:
    function = ex.function
    assert function is not None and function.training is not None  # (called for a training run only)
    result = function.training.result
    if result.name in flags and run.captured.reached(ex.id):
        return Comparison.failed(flags[result.name].status, f"{result.name}: {flags[result.name].reason}")
    if not run.captured.reached(ex.id):
        return Comparison.failed("error", f"{result.name}: the notebook did not run to the end ({run.captured.reason})")
    value = run.captured.values.get((ex.id, result.name), MISSING)
    if _returned_nothing(ex, run.captured):  # the stub as released: the training fails on it, but that is no news
        return Comparison.failed(
            "missing",
            f"{result.name}: `{function.name}` returns None: write {_exercise_name(ex)} first",
        )
    errors = _span_errors(run.plan, run.captured, ex.id) if any(c.exercise == ex.id for c in run.plan.captures) else []
    if errors:  # the training stopped early: its loss says nothing
        return Comparison.failed("error", f"{result.name}: the training did not run to the end: {errors[0]}")
    if value is MISSING:
        return Comparison.failed("missing", f"{result.name} was not computed")
    reference = run.reference.get(TrainingResult(ex.id, result.name))
    if not isinstance(reference, torch.Tensor):
        return Comparison.failed("error", f"{result.name}: no reference here")
    c = compare(result.name, value, reference, result.tolerance)
    message = c.message
    if c.status == "wrong":
        message = (
            f"{result.name}: the loss after the short training run is off by {c.maxdiff:.3g} from a run "
            "with autograd's gradients"
        )
    return dataclasses.replace(c, message=message)


def _returned_nothing(ex: Exercise, captured: Captured) -> bool:
    """Whether the answer's function was called and its first graded call returned None, or None for every value."""
    calls = ex.function.calls if ex.function else ()
    call = calls[0] if calls else 0
    recorded = (k for k in captured.values if isinstance(k, CallArgument | CallWeight | CallReturned))
    made = any((k.exercise, k.call) == (ex.id, call) for k in recorded)
    if not made or CallRaised(ex.id, call) in captured.values:
        return False
    returned = [captured.values.get(CallReturned(ex.id, call, v.name), MISSING) for v in ex.variables]
    return all(r is None or r is MISSING for r in returned)


def _exercise_name(ex: Exercise) -> str:
    """`Exercise 4` for the id `ex4`; the id itself where it is not of that form."""
    number = ex.id.removeprefix("ex")
    return f"Exercise {number}" if number.isdigit() else f"exercise {ex.id}"


def _only_just(first: Comparison, var: Variable, reference: object) -> bool:
    """Whether an approximate answer uses more than a tenth of its tolerance (a near miss, not rounding)."""
    if first.exact or first.maxdiff is None or not isinstance(reference, torch.Tensor) or not reference.numel():
        return False
    allowed = var.tolerance.atol + var.tolerance.rtol * float(reference.detach().double().abs().max())
    return first.maxdiff > 0.1 * allowed


def _hint(
    changed: tuple[str, ...],
    defaults: dict[str, object],
    literals: set[float] | None,
    n: int | None,
    dims: frozenset[int],
) -> str:
    """A guess at why an answer is right for the published parameters only (no hidden value in it), from the
    values alone, never a parameter's name: a changed parameter's published value written as a number in the
    answer cell (`literals`: the numbers it holds; None where it cannot be read), named by the parameter, the
    batch's size `n` as n; else, where a changed parameter is no size of the exercise's tensors (`dims`: a seed, a
    scale), numbers copied from one run."""
    guesses = []
    for name in changed:
        value = defaults.get(name)
        if type(value) is not int or value < 2:
            continue
        if value == n:  # the batch's size: the lecture's n, and n - 1 with Bessel's correction
            if literals is None or value in literals or value - 1 in literals:
                guesses.append(f"a literal {value} or {value - 1} (use n, the batch size)")
        elif literals is None and value in dims:
            guesses.append(f"a literal {value} (use the tensors' shapes)")
        elif literals is not None and value in literals:
            guesses.append(
                f"a literal {value} where {name} belongs ({name} = {value}: use {name} or the tensors' shapes)"
            )
    if guesses:
        return f": is there {' or '.join(guesses)} in your code?"
    if any(defaults.get(name) not in dims for name in changed):
        return ": are there numbers copied from one run in your code? Compute them from the tensors"
    return ""


def _dims(ex: Exercise, run: GradedRun) -> frozenset[int]:
    """The sizes of the dimensions of the exercise's reference tensors in `run`."""
    sizes: set[int] = set()
    for v in ex.variables:
        reference = run.reference.get(ex.reference_key(v))
        if isinstance(reference, torch.Tensor):
            sizes.update(reference.shape)
    return frozenset(sizes)


def _literals(plan: Plan, ex: Exercise) -> set[float] | None:
    """The numbers written in the exercise's answer cell (`32`, `31.0`), or None where it does not parse."""
    sources = [c.source for c in plan.cells if c.grade_id == ex.cell]
    out: set[float] = set()
    for source in sources:
        tree = as_python(source)[1]
        if tree is None:
            return None
        out |= {
            float(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and not isinstance(n.value, bool)
        }
    return out


LOCAL_ONLY = (
    "{name}: this step is right for the gradients it was computed from; "
    "its value is off only because of an earlier mistake"
)


def _root_cause(ex: Exercise, results: list[VariableResult]) -> str:
    """The first variable of `ex` whose own step is wrong, if a later one is off only because of it."""
    mine = [r for r in results if r.exercise == ex.id]
    first = next((r for r in mine if r.local_status not in PASSING), None)
    followers = [r for r in mine if r.status not in PASSING and r.local_status in PASSING]
    return first.name if first is not None and followers else ""


def _credible_roots_only(rubric: Rubric, results: list[VariableResult], runs: list[GradedRun]) -> list[VariableResult]:
    """Take back the step credit below a first wrong step whose answer is degenerate (`_degenerate`).

    A chain of answers consistent with each other but not computed (all zeros, all ones: `d_emb` = ones is what
    `d_embcat` = ones sends back through the view) must not earn credit; an honest first mistake, however far
    from the reference (a missing transpose, a dropped term), leaves the steps below it to be judged alone.
    """
    out = list(results)
    for ex in rubric.exercises:
        root = next((r for r in results if r.exercise == ex.id and r.local_status not in PASSING), None)
        if root is None or root.status in ("shape", "dtype") or not _degenerate(ex, root, runs):
            continue
        for i, r in enumerate(out):
            if r.exercise == ex.id and r.status not in PASSING and r.points:
                out[i] = dataclasses.replace(
                    r,
                    points=0.0,
                    local_status=r.status,
                    hint="",
                    message=(
                        f"{r.name}: off because of an earlier gradient ({root.name}), which is not an attempt at it"
                    ),
                )
    return out


def _degenerate(ex: Exercise, root: VariableResult, runs: list[GradedRun]) -> bool:
    """Whether the first wrong answer of `ex` carries nothing computed, by its values alone: not a tensor of the
    reference's shape, all zeros, one constant where the reference is not, or the very same numbers in a run
    whose reference differs (numbers copied from one run). Any other wrong answer is an attempt."""
    main = runs[0]
    answer, reference = main.captured.values.get((ex.id, root.name)), main.reference.get(ex.reference_key(root))
    if type(answer) is not torch.Tensor or not isinstance(reference, torch.Tensor) or answer.shape != reference.shape:
        return True
    a, r = answer.detach().double(), reference.detach().double()
    if not bool(a.any()):
        return True
    if a.numel() > 1 and bool((a == a.flatten()[0]).all()) and not bool((r == r.flatten()[0]).all()):
        return True
    for run in runs[1:]:
        other, theirs = run.captured.values.get((ex.id, root.name)), run.reference.get(ex.reference_key(root))
        if type(other) is not torch.Tensor or not isinstance(theirs, torch.Tensor):
            continue
        moved = theirs.shape != reference.shape or not torch.equal(theirs.detach(), reference.detach())
        if moved and other.shape == answer.shape and torch.equal(other.detach(), answer.detach()):
            return True
    return False


def _name_root_causes(rubric: Rubric, results: list[VariableResult]) -> list[VariableResult]:
    """Say in each message that is off only because of an earlier mistake which variable that is."""
    out = []
    for r in results:
        ex = next(e for e in rubric.exercises if e.id == r.exercise)
        root = _root_cause(ex, results)
        credited_locally = r.status not in PASSING and r.local_status in PASSING and r.points == r.max_points
        if root and credited_locally:
            r = dataclasses.replace(r, message=f"{r.message}, in {root}")
        out.append(r)
    return out


def score(rubric: Rubric, notebook: str, runs: list[GradedRun], defaults: dict[str, object]) -> Report:
    """Grade every variable of `rubric`: it earns its points only if it passes in every run.

    `runs[0]` is the run with the notebook's published parameters; the others are hidden re-runs.
    `defaults` are the published parameters (for hints; never a hidden value).
    """
    results: list[VariableResult] = []
    for ex in rubric.exercises:
        flags = _scan_flags(runs[0].plan, ex, rubric.forbidden)
        for j, var in enumerate(ex.graded):
            results.append(_variable_result(rubric, ex, j, var, runs, flags, defaults))
    results = _credible_roots_only(rubric, results, runs)
    results = _name_root_causes(rubric, results)
    return _report(rubric, notebook, runs, results)


def _variable_result(
    rubric: Rubric,
    ex: Exercise,
    j: int,
    var: Variable,
    runs: list[GradedRun],
    flags: dict[str, Flag],
    defaults: dict[str, object],
) -> VariableResult:
    """One graded variable (the `j`-th of `ex`) judged in every run: its points, and the message that explains them."""
    main = runs[0]
    verdicts, local = _verdicts(ex, j, var, runs, flags)
    first = verdicts[0]
    status, message, hint_given = _across_runs(ex, var, runs, verdicts, defaults)
    passed = all(v.passed for v in verdicts)
    local_status = status
    if local is not None:
        local_failing = next((v for v in local if not v.passed), None)
        local_status = local_failing.status if local_failing else local[0].status
        if rubric.credit == "local" and local_failing is None and not passed:
            passed, message, hint_given = True, LOCAL_ONLY.format(name=var.name), ""
        elif (
            first.status == local[0].status == "wrong"
            and local[0] is not first
            and local[0].hint
            and (not first.hint or _below_a_mistake(ex, var, main))
        ):
            # below an earlier mistake: say what is wrong with this step (its value's hint would mix
            # in the earlier mistake: a factor 2 seen through a flipped sign reads as -2)
            message, hint_given = local[0].message, local[0].hint
    return VariableResult(
        ex.id,
        var.name,
        var.of,
        status,
        first.exact,
        first.approximate,
        first.maxdiff,
        var.points if passed else 0.0,
        var.points,
        message,  # (a passing answer's: a warning, or empty)
        runs=tuple(v.status for v in verdicts),
        local_status=local_status,
        hint=hint_given,
    )


def _verdicts(
    ex: Exercise, j: int, var: Variable, runs: list[GradedRun], flags: dict[str, Flag]
) -> tuple[list[Comparison], list[Comparison] | None]:
    """The variable's verdict in each run, and (plain exercises only) its step judged on its own in each run."""
    if ex.function is not None and j < len(ex.variables):
        return [_function_verdict(ex, j, var, run, flags) for run in runs], None
    if ex.function is not None:
        return [_training_verdict(ex, run, flags) for run in runs], None
    verdicts = [_verdict(ex, var, run, flags) for run in runs]
    agreed = _agreed_factors(verdicts)
    if agreed is not None:  # (a factor named must fit in every run where the answer is one)
        verdicts[0] = _verdict(ex, var, runs[0], flags, agreed)
    return verdicts, [_local_verdict(ex, var, run, v) for run, v in zip(runs, verdicts)]


def _across_runs(
    ex: Exercise, var: Variable, runs: list[GradedRun], verdicts: list[Comparison], defaults: dict[str, object]
) -> tuple[str, str, str]:
    """(status, message, hint) of the variable over every run: the notebook's own run's, unless it passes there
    and fails in a hidden run, which is then named without giving any of that run's values away."""
    main, first = runs[0], verdicts[0]
    # (a hidden run that did not reach this exercise fails it too: a notebook that stops its hidden runs
    # on purpose, at any exercise, must not escape their checks of the exercises after it)
    failing = next(((run, v) for run, v in zip(runs[1:], verdicts[1:]) if not v.passed), None)
    if not first.passed or failing is None:
        return first.status, first.message, first.hint
    run, v = failing
    # no comparison text, shape or error message here: they could give a hidden value away
    hint = (
        _hint(run.changed, defaults, _literals(main.plan, ex), _n(main), _dims(ex, main)) if ex.function is None else ""
    )
    if hint and v.status == "wrong" and _only_just(first, var, main.reference.get(ex.reference_key(var))):
        # a formula a little off, not a copied number: it passes here within the tolerance only
        hint = (
            ": it passes with the notebook's parameters only just (within the tolerance), so a small "
            "error in the formula shows with other values"
        )
    if run.captured.reached(ex.id):
        message = (
            f"{var.name} is right with the notebook's parameters but {v.status.replace('_', ' ')} "
            f"in {run.label} (other {', '.join(run.changed)}){hint}"
        )
    else:
        message = f"{var.name} is right with the notebook's parameters but {run.label} did not run to the end{hint}"
    return v.status, message, ""


def _report(rubric: Rubric, notebook: str, runs: list[GradedRun], results: list[VariableResult]) -> Report:
    """The notebook's report from its variables' results: the exercises' scores, the notes, the runs."""
    main = runs[0]
    exercises = tuple(
        ExerciseResult(
            ex.id, sum(r.points for r in results if r.exercise == ex.id), ex.max_score, _root_cause(ex, results)
        )
        for ex in rubric.exercises
    )
    notes = main.plan.notes + tuple(f"{o.label} raised {o.error}" for o in main.captured.cells if o.error)
    notes += main.captured.notes
    notes += tuple(f"{run.label} did not run to the end" for run in runs[1:] if not run.captured.finished)
    return Report(
        assignment=rubric.assignment,
        notebook=notebook,
        status="graded" if main.captured.finished else "failed",
        error=main.captured.reason,
        score=sum(e.score for e in exercises),
        max_score=rubric.max_score,
        exercises=exercises,
        variables=tuple(results),
        notes=notes,
        runs=tuple(
            RunSummary(
                run.label, "graded" if run.captured.finished else "failed", run.captured.reason if run is main else ""
            )
            for run in runs
        ),
        peak_memory_mb=max((run.captured.peak_memory_mb for run in runs), default=0.0),
    )
