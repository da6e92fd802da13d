"""Each step of the chain on its own: the forward pass cut at every graded tensor, so that a gradient can be judged
by what the student's own later gradients send back through one step (step credit), at the student's own
forward values (lecture notebooks), or drawn as the graph of the feedback page.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io

import torch

from grader.assignment import Assignment
from grader.plan import injected_source
from grader.reference.forward import LOCK, after_setup, forward_graph
from grader.scan import parse


@functools.lru_cache(maxsize=8)
def _cut(assignment: Assignment, params_items: tuple) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The forward pass cut at every graded tensor: name -> (the tensor, the named tensors it is made from).

    The reference cells run again, statement by statement; right after a statement makes a graded
    tensor, the name is rebound to a detached copy that requires grad. So each tensor's graph reaches
    back only to the named tensors it is computed from directly, and autograd's gradient of it with
    respect to them is the local step alone (broadcasting and all).
    """
    rubric = assignment.rubric
    params = dict(params_items)
    wanted = sorted(
        {v.of for ex in rubric.exercises if ex.plain for v in ex.variables}
    )  # (an order of its own: pictures are the same in every process)
    base = after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    sources = assignment.cells
    made: dict[str, torch.Tensor] = {}  # name -> the tensor as its statement made it (with its graph)
    leaves: dict[str, torch.Tensor] = {}  # name -> the detached copy later statements use
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for gid in rubric.reference_cells:
            for statement in parse(sources[gid]).body:
                exec(compile(ast.Module([statement], []), f"<reference cell {gid}>", "exec"), ns)
                for name in wanted:
                    value = ns.get(name)
                    if isinstance(value, torch.Tensor) and value.requires_grad and value is not leaves.get(name):
                        made[name] = value
                        if value.grad_fn is not None:
                            ns[name] = leaves[name] = value.detach().requires_grad_(True)
                        else:
                            leaves[name] = value  # a parameter: a leaf already
    out: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
    for name, value in made.items():
        inputs = {x: leaf for x, leaf in leaves.items() if x != name}
        if value.grad_fn is None:
            out[name] = (value, {})
            continue
        used = torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True, retain_graph=True)
        out[name] = (value, {x: leaf for (x, leaf), g in zip(inputs.items(), used) if g is not None})
    return out


def own_gradients(
    assignment: Assignment, params: dict[str, object], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Autograd's gradient of every graded forward tensor, with each graded tensor's value taken from `own`
    (the student's forward tensors, as their run made them) where that is a tensor of the same shape and dtype.

    The released forward pass runs statement by statement, and right after a statement makes a graded tensor
    the name is rebound to a leaf holding the student's value (the lecture's where theirs does not fit); then
    the loss's gradient flows back step by step, each step through the released formula at the student's
    values. So a forward pass equivalent to the released one but different in the last bits gets the gradients
    its own autograd gives (as the lecture's `cmp` checks them), not those of the released values: checked
    against those, rounding is amplified where sums cancel (`dW2`, whose rows of `dlogits` sum to zero).
    """
    return _own_walk(assignment, params, own)[0]


def differing_steps(assignment: Assignment, params: dict[str, object], own: dict[str, torch.Tensor]) -> list[str]:
    """The graded forward tensors (in forward order) whose own step differs from the released one beyond float32
    rounding: the released statement, run on the student's values of its inputs, does not give the student's value
    (`bnvar_inv = (bnvar - 1e-5)**-0.5` where the release has `+`). A formula equal to the release's up to the last
    bits (`1.0 / torch.sqrt(...)` for `**-0.5`) differs by a few units in the last place, and is not listed."""
    return _own_walk(assignment, params, own)[1]


def _own_walk(
    assignment: Assignment, params: dict[str, object], own: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    rubric = assignment.rubric
    differing: list[str] = []
    with LOCK:
        params = dict(params)
        wanted = {v.of for ex in rubric.exercises if ex.plain for v in ex.variables} | {rubric.loss}
        base = after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
        ns = dict(base)
        exec(injected_source(params), ns)
        sources = assignment.cells
        made: dict[str, torch.Tensor] = {}  # name -> the tensor its statement made from the leaves before it
        leaves: dict[str, torch.Tensor] = {}  # name -> the leaf later statements read (the student's value)
        order: list[str] = []
        with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
            for gid in rubric.reference_cells:
                for statement in parse(sources[gid]).body:
                    exec(compile(ast.Module([statement], []), f"<reference cell {gid}>", "exec"), ns)
                    for name in sorted(wanted):
                        value = ns.get(name)
                        if not isinstance(value, torch.Tensor) or not value.requires_grad or value is leaves.get(name):
                            continue
                        theirs = own.get(name)
                        if not (
                            type(theirs) is torch.Tensor
                            and theirs.shape == value.shape
                            and theirs.dtype == value.dtype
                            and bool(torch.isfinite(theirs).all())
                        ):
                            theirs = None  # (theirs does not fit: the released value stands in)
                        if theirs is not None and value.grad_fn is not None and not _same_step(value.detach(), theirs):
                            differing.append(name)
                        if value.grad_fn is None:  # a parameter: autograd's leaf already
                            leaf = value
                        else:
                            leaf = (value if theirs is None else theirs).detach().clone().requires_grad_(True)
                            made[name] = value
                        ns[name] = leaves[name] = leaf
                        if name in order:
                            order.remove(name)
                        order.append(name)
            grads: dict[str, torch.Tensor] = {}
            if rubric.loss in made:
                grads[rubric.loss] = torch.ones_like(made[rubric.loss])
            # back from the loss, each step on its own: a tensor's gradient is complete once every later
            # tensor (all its users) has sent its part; parts add up in the order autograd's engine adds them
            for name in reversed(order):
                value, grad = made.get(name), grads.get(name)
                if value is None or grad is None:
                    continue
                inputs = [(x, leaf) for x, leaf in leaves.items() if x != name and order.index(x) < order.index(name)]
                sent = torch.autograd.grad((value * grad).sum(), [leaf for _, leaf in inputs], allow_unused=True)
                for (x, _), g in zip(inputs, sent):
                    if g is not None:
                        grads[x] = g.detach() if x not in grads else grads[x] + g.detach()
        return {name: g for name, g in grads.items() if name != rubric.loss}, differing


_STEP_RTOL = 1e-6
"""How far one step's value may be from the released formula's on the same inputs (relative to its largest entry)
and still be the same formula: float32 rounding of an equivalent one is a few parts in 10^7."""


def _same_step(released: torch.Tensor, theirs: torch.Tensor) -> bool:
    scale = float(released.abs().max()) if released.numel() else 0.0
    return bool(torch.allclose(theirs, released, rtol=_STEP_RTOL, atol=_STEP_RTOL * scale))


def _grad(t: torch.Tensor) -> torch.Tensor:
    """A forward tensor's gradient, which `forward_graph` made sure there is."""
    assert t.grad is not None
    return t.grad


def forward_edges(assignment: Assignment, params: dict[str, object]) -> dict[str, tuple[str, ...]]:
    """Graded forward tensor -> the graded tensors it is computed from directly (for pictures)."""
    with LOCK:
        return {name: tuple(inputs) for name, (_, inputs) in _cut(assignment, tuple(params.items())).items()}


def _flow(assignment: Assignment, params_items: tuple, y: str, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient that `grad`, put on graded tensor `y`, sends to each named tensor `y` is made from."""
    value, inputs = _cut(assignment, params_items)[y]
    if not inputs:
        return {}
    with torch.enable_grad():
        # (value * grad).sum() rather than grad_outputs=grad: the same products, and torch imports sympy
        # the first time grad_outputs is given
        grads = torch.autograd.grad((value * grad).sum(), list(inputs.values()), retain_graph=True)
    return {x: g.detach() for x, g in zip(inputs, grads)}


@functools.lru_cache(maxsize=8)
def _uses(assignment: Assignment, params_items: tuple) -> dict[str, dict[str, torch.Tensor]]:
    """x -> {y: the part of x's gradient that comes back through y}, for every named x and its users y."""
    references = dict(forward_graph(assignment, params_items))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for y in _cut(assignment, params_items):
        for x, g in _flow(assignment, params_items, y, _grad(references[y])).items():
            parts.setdefault(x, {})[y] = g
    return parts


def parts_by_use(assignment: Assignment, params_items: tuple) -> dict[str, dict[str, torch.Tensor]]:
    """For each named tensor used by two or more named tensors, the gradient flowing back from each use.

    A use whose part is negligible (the max path into `logits`) is left out.
    """
    named = forward_graph(assignment, params_items)
    out = {}
    for x, by_use in _uses(assignment, params_items).items():
        total = _grad(named[x])
        scale = float(total.abs().max()) or 1.0
        kept = {y: g for y, g in by_use.items() if g.shape == total.shape and float(g.abs().max()) > 1e-6 * scale}
        if len(kept) >= 2:
            out[x] = kept
    return out


def local_references(
    assignment: Assignment, params: dict[str, object], answers: dict[str, object]
) -> dict[str, torch.Tensor]:
    """What each gradient should be, given the student's own gradients of the tensors that use it.

    `answers` maps forward names to the student's gradients (`"probs"` -> their `d_probs`). For a
    tensor `x` all of whose users `y` have an answer of the right shape and dtype, the local reference
    is the sum over its users of what their answers send back to `x` through the released forward
    pass: an answer equal to it got its own step right, whatever was wrong before it.
    """
    if not any(ex.plain for ex in assignment.rubric.exercises):
        return {}
    with LOCK:
        key = (assignment, tuple(params.items()))
        named = forward_graph(*key)
        users = _uses(*key)  # (shared, cached: read, never changed)
        sent: dict[str, dict[str, torch.Tensor] | None] = {}
        for y in {y for by_use in users.values() for y in by_use}:
            answer = answers.get(y)
            if type(answer) is torch.Tensor and answer.shape == named[y].shape and answer.dtype == named[y].dtype:
                sent[y] = _flow(*key, y, answer.detach())
            else:
                sent[y] = None
        out: dict[str, torch.Tensor] = {}
        for x, by_use in users.items():
            parts = [(sent[y] or {}).get(x) for y in by_use]
            found = [p for p in parts if p is not None]
            if x in answers and found and len(found) == len(parts):
                out[x] = sum(found[1:], found[0])
        return out


def local_from(
    assignment: Assignment, params: dict[str, object], given: str, gradient: object, wrt: str
) -> torch.Tensor | None:
    """The gradient of `wrt` that `gradient`, put on forward tensor `given`, sends back through the released
    forward pass (all paths): what an exercise starting from the student's own gradient of `given` should
    give. None if that gradient is not a tensor of `given`'s shape and dtype."""
    with LOCK:
        named = forward_graph(assignment, tuple(params.items()))
        y, x = named.get(given), named.get(wrt)
        if (
            y is None
            or x is None
            or type(gradient) is not torch.Tensor
            or gradient.shape != y.shape
            or gradient.dtype != y.dtype
        ):
            return None
        with torch.enable_grad():
            (g,) = torch.autograd.grad((y * gradient.detach()).sum(), [x], retain_graph=True)
        return g.detach()
