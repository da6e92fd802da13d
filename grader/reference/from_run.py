"""The references a run's own values decide: autograd's answer to each call the run recorded of a student's
function, and what each gradient should be given the student's own later gradients (step credit). Computed
after the run, in the grader's process, from the values it brought back (a `Captured`).
"""

from __future__ import annotations

import torch

from grader.assignment import Assignment
from grader.compare import same_but_ones
from grader.reference.calls import call_gradients
from grader.reference.steps import local_from, local_references
from grader.rubric import Variable
from grader.runs import CallArgument, CallWeight, Captured, Key, LocalGradient, ReplayedCall, ValueKey


def replayed_calls(assignment: Assignment, params: dict[str, object], captured: Captured) -> dict[Key, object]:
    """Autograd's answers to the recorded calls of function exercises: `ReplayedCall` -> gradients."""
    out: dict[Key, object] = {}
    for ex in assignment.rubric.exercises:
        if ex.function is None or not captured.reached(ex.id):
            continue
        calls = {}
        for call in ex.function.calls:
            args = _numbered(captured.values, CallArgument, ex.id, call)
            weights = _numbered(captured.values, CallWeight, ex.id, call)
            if args or weights:
                calls[call] = (args, weights)
        for call, grads in call_gradients(assignment, ex, params, calls).items():
            out[ReplayedCall(ex.id, call)] = grads
    return out


def step_references(
    assignment: Assignment, params: dict[str, object], captured: Captured, refs: dict[Key, object]
) -> dict[Key, object]:
    """Per plain exercise, what each gradient should be given the student's own gradients below it in the
    chain (`LocalGradient` -> tensor): each step judged on its own."""
    rubric = assignment.rubric
    out: dict[Key, object] = {}
    for ex in rubric.exercises:
        if not captured.reached(ex.id):  # stopped before it: nothing of it to judge
            continue
        if not ex.plain:
            continue
        answers = {v.of: _fitted(captured.values.get((ex.id, v.name)), v, refs) for v in ex.variables}
        given = None
        if ex.given:
            # the student's own gradient of `given`, from the exercise that asks for it: the step into the
            # exercise starts from it, as every later step starts from the student's own answers
            source = next(
                ((e.id, v.name) for e in rubric.exercises for v in e.variables if v.of == ex.given and e.id != ex.id),
                None,
            )
            source_var = next((v for e in rubric.exercises for v in e.variables if (e.id, v.name) == source), None)
            given = _fitted(captured.values.get(source), source_var, refs) if source else None
            answers[ex.given] = given
        if len(answers) > 1:
            for x, t in local_references(assignment, params, answers).items():
                if x != ex.given:
                    out[LocalGradient(ex.id, x)] = t
        if ex.given:
            # a variable whose users are not all answered here: the whole way back from `given`
            for v in ex.variables:
                if LocalGradient(ex.id, v.of) not in out:
                    whole = local_from(assignment, params, ex.given, given, v.of)
                    if whole is not None:
                        out[LocalGradient(ex.id, v.of)] = whole
    return out


def _fitted(value: object, var: Variable | None, refs: dict[Key, object]) -> object:
    """`value`, reshaped to its reference's shape where the rubric credits broadcastable shapes."""
    ref = refs.get(var.of) if var is not None else None
    if (
        var is not None
        and var.tolerance.broadcast
        and type(value) is torch.Tensor
        and isinstance(ref, torch.Tensor)
        and value.shape != ref.shape
        and same_but_ones(tuple(value.shape), tuple(ref.shape))
    ):
        return value.reshape(ref.shape)
    return value


def _numbered(
    values: dict[ValueKey, object], kind: type[CallArgument | CallWeight], exercise: str, call: int
) -> list[object]:
    """A recorded call's arguments or weights in order, up to the first one the run did not send."""
    found: list[object] = []
    while (key := kind(exercise, call, len(found))) in values:
        found.append(values[key])
    return found
