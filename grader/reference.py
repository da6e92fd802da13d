"""The reference, computed by the grader itself with autograd.

Runs the released notebook's own cells (trusted code, never the student's) with the same parameters
as the graded run and asks autograd for the gradients. The setup cells (the data set) run once per
value of the rubric's `setup_parameters` and are shared by all runs. For an answer that is a function,
the grader replays each recorded call with autograd: the released forward pass, at the weights and on
the batch of that very call.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import numbers
import threading
from collections.abc import Mapping
from pathlib import Path

import torch

from grader.assignment import Assignment
from grader.errors import GraderError, RubricError
from grader.notebook import grade_id, has_tag
from grader.plan import injected_source
from grader.rubric import Exercise
from grader.runs import TARGETS, GradientParts, Key, TrainingResult

# The reference cells use process-wide state (the `random` module's seed, stdout): one run at a time.
_LOCK = threading.RLock()


def _check_kernels() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise GraderError(
            f"torch was imported with its {capability} kernels before the grader could pin the scalar ones; "
            "import grader before torch, or set ATEN_CPU_CAPABILITY=default in the environment"
        )


def _run(ns: dict, sources: Mapping[str, str], cells: tuple[str, ...], where: str) -> None:
    missing = [gid for gid in cells if gid not in sources]
    if missing:
        raise RubricError(f"{where}: no cells with grade_id {missing}")
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for gid in cells:
            exec(compile(sources[gid], f"<{Path(where).name} reference cell {gid}>", "exec"), ns)


# The memos below (functools.lru_cache) are keyed by the assignment, which is equal to another exactly when
# their digests are, and by the parameters: they compute, never load.

@functools.lru_cache(maxsize=4)
def _after_setup(assignment: Assignment, setup_params: tuple) -> dict:
    """The namespace after the setup cells (shared: callers copy it, never change it)."""
    _check_kernels()
    rubric = assignment.rubric
    ns: dict = {"__name__": "__reference__"}
    exec(injected_source(dict(setup_params)), ns)
    _run(ns, assignment.cells, rubric.setup_cells, str(rubric.released))
    return ns


def _namespace(assignment: Assignment, params: dict[str, object], cells: tuple[str, ...]) -> dict:
    """A fresh namespace: the shared setup, then the parameters and `cells`."""
    rubric = assignment.rubric
    base = _after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    _run(ns, assignment.cells, cells, str(rubric.released))
    return ns


def gradients(assignment: Assignment, params: dict[str, object]) -> dict[Key, object]:
    """Reference of every graded variable of the plain exercises (forward name -> gradient; `GradientParts`,
    `TARGETS` for hints), of values exercises (`ValueOf`) and of the training runs of function exercises
    (`TrainingResult` -> a float64 scalar)."""
    with _LOCK:
        return dict(_gradients(assignment, tuple(params.items())))


@functools.lru_cache(maxsize=8)
def _reference_namespace(assignment: Assignment, params_items: tuple) -> dict:
    """The reference cells run once per parameter set: the gradients' graph and the values both read it."""
    return _namespace(assignment, dict(params_items), assignment.rubric.reference_cells)


@functools.lru_cache(maxsize=8)
def _graph(assignment: Assignment, params_items: tuple) -> dict[Key, torch.Tensor]:
    """The released forward pass with autograd: every graded forward tensor, its `.grad` set, the graph kept
    (and the batch's targets under `TARGETS`)."""
    rubric = assignment.rubric
    where = str(rubric.released)
    plain = [ex for ex in rubric.exercises if ex.plain]
    ns = _reference_namespace(assignment, params_items)
    wanted = sorted({v.of for ex in plain for v in ex.variables})
    tensors = {name: ns.get(name) for name in wanted}
    absent = [name for name, t in tensors.items() if not isinstance(t, torch.Tensor)]
    if absent or not isinstance(ns.get(rubric.loss), torch.Tensor):
        raise RubricError(f"{where}: the reference cells do not define {absent or [rubric.loss]}")
    with torch.enable_grad():
        for t in tensors.values():
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        ns[rubric.loss].backward(retain_graph=True)  # kept: the per-use parts and local references walk it
    for name, t in tensors.items():
        if t.grad is None:
            raise RubricError(f"{where}: {name} gets no gradient from {rubric.loss}")
    if rubric.targets and isinstance(ns.get(rubric.targets), torch.Tensor):
        tensors[TARGETS] = ns[rubric.targets].detach()
    return tensors


def forward_values(assignment: Assignment, params: dict[str, object]) -> dict[str, torch.Tensor]:
    """The graded forward tensors' values (detached), as the reference's forward pass made them."""
    with _LOCK:
        return {k: t.detach() for k, t in _graph(assignment, tuple(params.items())).items() if k != TARGETS}


@functools.lru_cache(maxsize=16)
def _gradients(assignment: Assignment, params_items: tuple) -> tuple[tuple[Key, object], ...]:
    rubric = assignment.rubric
    params = dict(params_items)
    out: list[tuple[Key, object]] = []
    if any(ex.plain for ex in rubric.exercises):
        with _LOCK:
            graph = _graph(assignment, params_items)
            named = {k: t for k, t in graph.items() if k != TARGETS}
            out += [(name, t.grad.detach().clone()) for name, t in named.items()]
            if TARGETS in graph:
                out.append((TARGETS, graph[TARGETS].clone()))
            out += [(GradientParts(name), parts) for name, parts in _parts_by_use(assignment, params_items).items()]
    for ex in rubric.exercises:
        if ex.function is not None and ex.function.training is not None:
            out.append((TrainingResult(ex.id, ex.function.training.result.name), _training(assignment, ex, params)))
    if any(ex.kind == "values" for ex in rubric.exercises):
        with _LOCK:
            out += _values(assignment, params)
    return tuple(out)


def as_reference(value: object) -> torch.Tensor | str:
    """A value as the grader compares it: tensors as they are (detached), numbers as float64 scalars."""
    if isinstance(value, torch.Tensor):
        value = value.detach().clone()
        return value.double() if value.ndim == 0 and value.is_floating_point() else value
    if isinstance(value, numbers.Real):  # (numpy's scalars too)
        return torch.tensor(float(value), dtype=torch.float64)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
        return torch.tensor(list(value), dtype=torch.bool)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, numbers.Real) for v in value):
        return torch.tensor([float(v) for v in value], dtype=torch.float64)
    return f"the reference value is {type(value).__name__}, not a tensor or a number"


def _values(assignment: Assignment, params: dict[str, object]) -> list[tuple[Key, object]]:
    """References of values exercises (`ValueOf` -> tensor, or why there is none)."""
    rubric = assignment.rubric
    out: list[tuple[Key, object]] = []
    exercises = [ex for ex in rubric.exercises if ex.kind == "values"]
    if any(ex.source == "reference" for ex in exercises):
        ns = _reference_namespace(assignment, tuple(params.items()))
        for ex in exercises:
            if ex.source == "reference":
                out += [(ex.reference_key(v), as_reference(ns[v.of]) if v.of in ns else
                         f"the reference cells do not define {v.of}") for v in ex.variables]
    if any(ex.source == "solution" for ex in exercises):
        found = _solution_values(assignment, tuple(params.items()))
        for ex in exercises:
            if ex.source == "solution":
                out += [(ex.reference_key(v), found.get(ex.reference_key(v), found.get("")
                         or f"the solution does not compute {v.of}")) for v in ex.variables]
    return out


@functools.lru_cache(maxsize=8)
def _solution_values(assignment: Assignment, params_items: tuple) -> dict[Key, object]:
    """The instructor's solution run here (trusted code), with the same parameters: the value of each variable
    of a `source = "solution"` exercise right after its answer cell. `""` -> why there are none."""
    rubric = assignment.rubric
    solution = assignment.solution
    name = rubric.released.name  # (the solution's file name too)
    if solution is None:
        return {"": f"its reference comes from the instructor's solution ({name}), which this installation "
                    "does not have (a student's copy never does: it is graded where the solution is, by `grader "
                    "grade` in a source checkout, nbgrader or the Gradescope autograder)"}
    import matplotlib

    matplotlib.use("Agg")  # a solution cell may plot
    params = dict(params_items)
    base = _after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    skip = set(rubric.skip_cells) | set(rubric.setup_cells)
    wanted = {ex.cell: ex for ex in rubric.exercises if ex.kind == "values" and ex.source == "solution"}
    out: dict[Key, object] = {}
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for cell in solution.cells:
            gid = grade_id(cell)
            if cell.cell_type != "code" or gid in skip or has_tag(cell, "parameters"):
                continue
            exec(compile(cell.source, f"<{name} solution cell {gid}>", "exec"), ns)
            if gid in wanted:
                ex = wanted[gid]
                out.update((ex.reference_key(v), as_reference(ns[v.of]) if v.of in ns else
                            f"the solution does not compute {v.of}") for v in ex.variables)
    return out


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
    wanted = sorted({v.of for ex in rubric.exercises if ex.plain for v in ex.variables})  # (an order of its own: pictures are the same in every process)
    base = _after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
    ns = dict(base)
    exec(injected_source(params), ns)
    sources = assignment.cells
    made: dict[str, torch.Tensor] = {}  # name -> the tensor as its statement made it (with its graph)
    leaves: dict[str, torch.Tensor] = {}  # name -> the detached copy later statements use
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        for gid in rubric.reference_cells:
            for statement in ast.parse(sources[gid]).body:
                exec(compile(ast.Module([statement], []), f"<reference cell {gid}>", "exec"), ns)
                for name in wanted:
                    value = ns.get(name)
                    if isinstance(value, torch.Tensor) and value.requires_grad and value is not leaves.get(name):
                        made[name] = value
                        if value.grad_fn is not None:
                            ns[name] = leaves[name] = value.detach().requires_grad_(True)
                        else:
                            leaves[name] = value  # a parameter: a leaf already
    out = {}
    for name, value in made.items():
        inputs = {x: leaf for x, leaf in leaves.items() if x != name}
        if value.grad_fn is None:
            out[name] = (value, {})
            continue
        used = torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True, retain_graph=True)
        out[name] = (value, {x: leaf for (x, leaf), g in zip(inputs.items(), used) if g is not None})
    return out


def own_gradients(assignment: Assignment, params: dict[str, object], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Autograd's gradient of every graded forward tensor, with each graded tensor's value taken from `own`
    (the student's forward tensors, as their run made them) where that is a tensor of the same shape and dtype.

    The released forward pass runs statement by statement, and right after a statement makes a graded tensor
    the name is rebound to a leaf holding the student's value (the lecture's where theirs does not fit); then
    the loss's gradient flows back step by step, each step through the released formula at the student's
    values. So a forward pass equivalent to the released one but different in the last bits gets the gradients
    its own autograd gives (as the lecture's `cmp` checks them), not those of the released values: checked
    against those, rounding is amplified where sums cancel (`dW2`, whose rows of `dlogits` sum to zero).
    """
    rubric = assignment.rubric
    with _LOCK:
        params = dict(params)
        wanted = {v.of for ex in rubric.exercises if ex.plain for v in ex.variables} | {rubric.loss}
        base = _after_setup(assignment, tuple((k, params[k]) for k in rubric.setup_parameters))
        ns = dict(base)
        exec(injected_source(params), ns)
        sources = assignment.cells
        made: dict[str, torch.Tensor] = {}  # name -> the tensor its statement made from the leaves before it
        leaves: dict[str, torch.Tensor] = {}  # name -> the leaf later statements read (the student's value)
        order: list[str] = []
        with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
            for gid in rubric.reference_cells:
                for statement in ast.parse(sources[gid]).body:
                    exec(compile(ast.Module([statement], []), f"<reference cell {gid}>", "exec"), ns)
                    for name in sorted(wanted):
                        value = ns.get(name)
                        if not isinstance(value, torch.Tensor) or not value.requires_grad or value is leaves.get(name):
                            continue
                        theirs = own.get(name)
                        fits = type(theirs) is torch.Tensor and theirs.shape == value.shape \
                            and theirs.dtype == value.dtype and bool(torch.isfinite(theirs).all())
                        if value.grad_fn is None:  # a parameter: autograd's leaf already
                            leaf = value
                        else:
                            leaf = (theirs if fits else value).detach().clone().requires_grad_(True)
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
        return {name: g for name, g in grads.items() if name != rubric.loss}


def forward_edges(assignment: Assignment, params: dict[str, object]) -> dict[str, tuple[str, ...]]:
    """Graded forward tensor -> the graded tensors it is computed from directly (for pictures)."""
    with _LOCK:
        return {name: tuple(inputs) for name, (_, inputs) in _cut(assignment, tuple(params.items())).items()}


def _flow(assignment: str, params_items: tuple, y: str, grad: torch.Tensor) -> dict[str, torch.Tensor]:
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
def _uses(assignment: str, params_items: tuple) -> dict[str, dict[str, torch.Tensor]]:
    """x -> {y: the part of x's gradient that comes back through y}, for every named x and its users y."""
    references = dict(_graph(assignment, params_items))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for y in _cut(assignment, params_items):
        for x, g in _flow(assignment, params_items, y, references[y].grad).items():
            parts.setdefault(x, {})[y] = g
    return parts


def _parts_by_use(assignment: str, params_items: tuple) -> dict[str, dict[str, torch.Tensor]]:
    """For each named tensor used by two or more named tensors, the gradient flowing back from each use.

    A use whose part is negligible (the max path into `logits`) is left out.
    """
    named = _graph(assignment, params_items)
    out = {}
    for x, by_use in _uses(assignment, params_items).items():
        total = named[x].grad
        scale = float(total.abs().max()) or 1.0
        kept = {y: g for y, g in by_use.items() if g.shape == total.shape and float(g.abs().max()) > 1e-6 * scale}
        if len(kept) >= 2:
            out[x] = kept
    return out


def local_references(assignment: Assignment, params: dict[str, object], answers: dict[str, object]) -> dict[str, torch.Tensor]:
    """What each gradient should be, given the student's own gradients of the tensors that use it.

    `answers` maps forward names to the student's gradients (`"probs"` -> their `d_probs`). For a
    tensor `x` all of whose users `y` have an answer of the right shape and dtype, the local reference
    is the sum over its users of what their answers send back to `x` through the released forward
    pass: an answer equal to it got its own step right, whatever was wrong before it.
    """
    if not any(ex.plain for ex in assignment.rubric.exercises):
        return {}
    with _LOCK:
        key = (assignment, tuple(params.items()))
        named = _graph(*key)
        users = _uses(*key)  # (shared, cached: read, never changed)
        sent: dict[str, dict[str, torch.Tensor] | None] = {}
        for y in {y for by_use in users.values() for y in by_use}:
            answer = answers.get(y)
            ok = type(answer) is torch.Tensor and answer.shape == named[y].shape and answer.dtype == named[y].dtype
            sent[y] = _flow(*key, y, answer.detach()) if ok else None
        out: dict[str, torch.Tensor] = {}
        for x, by_use in users.items():
            parts = [(sent[y] or {}).get(x) for y in by_use]
            if x in answers and all(p is not None for p in parts):
                out[x] = sum(parts[1:], parts[0])
        return out


def local_from(assignment: Assignment, params: dict[str, object], given: str, gradient: object, wrt: str) -> torch.Tensor | None:
    """The gradient of `wrt` that `gradient`, put on forward tensor `given`, sends back through the released
    forward pass (all paths): what an exercise starting from the student's own gradient of `given` should
    give. None if that gradient is not a tensor of `given`'s shape and dtype."""
    with _LOCK:
        named = _graph(assignment, tuple(params.items()))
        y, x = named.get(given), named.get(wrt)
        if y is None or x is None or type(gradient) is not torch.Tensor or gradient.shape != y.shape \
                or gradient.dtype != y.dtype:
            return None
        with torch.enable_grad():
            (g,) = torch.autograd.grad((y * gradient.detach()).sum(), [x], retain_graph=True)
        return g.detach()


def _training(assignment: Assignment, ex: Exercise, params: dict[str, object]) -> torch.Tensor:
    """The training run of a function exercise, with autograd standing in for the student's function."""
    f = ex.function
    ns = _namespace(assignment, params, f.reference_cells)

    def with_autograd(Xb, Yb, *rest):
        with torch.enable_grad():
            loss = ns[f.forward](Xb, Yb)[0]
            return torch.autograd.grad(loss, ns[f.wrt])

    ns[f.name] = with_autograd
    _run(ns, assignment.cells, f.training.cells, str(assignment.rubric.released))
    result = ns[f.training.result.name]
    if isinstance(result, torch.Tensor):
        return result.detach().clone()
    return torch.tensor(float(result), dtype=torch.float64)  # the child sends plain numbers the same way


def call_gradients(assignment: Assignment, ex: Exercise, params: dict[str, object],
                   calls: dict[int, tuple[list, list]]) -> dict[int, tuple[torch.Tensor, ...] | str]:
    """For each recorded call (inputs, weights at that step): autograd's gradients, or why it cannot replay."""
    f = ex.function
    out: dict[int, tuple[torch.Tensor, ...] | str] = {}
    key = (assignment.digest, ex.id, repr(sorted(params.items())))
    digests = {call: _digest([*args, *recorded]) for call, (args, recorded) in calls.items()}
    with _LOCK:
        for call, digest in digests.items():
            if digest is not None and (key, digest) in _REPLAYED:
                out[call] = _REPLAYED[(key, digest)]  # e.g. the first step: the same for every student
    calls = {c: v for c, v in calls.items() if c not in out}
    if not calls:
        return out
    with _LOCK:
        ns = _namespace(assignment, params, f.reference_cells)
        weights = list(ns[f.wrt])
        homes = [[k for k, v in ns.items() if v is w] for w in weights]  # the globals the forward pass reads
        batch = (params.get("batch_size"), ns.get("block_size"))
        for call, (args, recorded) in calls.items():
            if len(args) >= 2 and all(isinstance(b, int) for b in batch) and not (
                    isinstance(args[0], torch.Tensor) and tuple(args[0].shape) == batch
                    and isinstance(args[1], torch.Tensor) and tuple(args[1].shape) == batch[:1]):
                # replayed here, in the grader's process: a call with any other batch is not one of the loop's
                out[call] = "the recorded call's batch is not a minibatch of the training loop"
                continue
            if len(args) < 2 or len(recorded) != len(weights) or any(
                    not isinstance(r, torch.Tensor) or r.shape != w.shape or r.dtype != w.dtype
                    for r, w in zip(recorded, weights)):
                out[call] = "the recorded weights or batch do not fit the network"
                continue
            if call == 0 and not all(torch.equal(r, w.detach()) for r, w in zip(recorded, weights)):
                out[call] = "the weights were not the released initial weights when training started"
                continue
            leaves = [r.detach().clone().requires_grad_(True) for r in recorded]
            for names, leaf in zip(homes, leaves):
                for name in names:
                    ns[name] = leaf
            try:
                with torch.enable_grad():
                    loss = ns[f.forward](args[0], args[1])[0]
                    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            except Exception as e:  # a batch that does not index the embedding, say
                out[call] = f"the recorded batch cannot be replayed ({type(e).__name__})"
                continue
            out[call] = tuple(torch.zeros_like(l) if g is None else g.detach() for g, l in zip(grads, leaves))
            if digests[call] is not None:
                if len(_REPLAYED) >= 256:
                    _REPLAYED.pop(next(iter(_REPLAYED)))
                _REPLAYED[(key, digests[call])] = out[call]
    return out


_REPLAYED: dict[tuple, tuple[torch.Tensor, ...] | str] = {}
"""Replayed calls by the content of their inputs and weights (the oldest go first past 256)."""


def _digest(tensors: list) -> str | None:
    """A hash of the dtypes, shapes and bytes of `tensors`, or None if any is not a plain CPU tensor."""
    h = hashlib.sha256()
    for t in tensors:
        if type(t) is not torch.Tensor or t.device.type != "cpu" or t.layout != torch.strided:
            return None
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
