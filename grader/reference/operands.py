"""Stage 4, after the run: a wrong gradient's mistake named in the student's own line, by changing one thing in it.

A student who writes `d_k = d_att @ q` where `d_att.transpose(-2, -1) @ q` is meant, or sums over the wrong
dimension, made a mistake the values alone can name only in special cases (a square result transposed as a
whole). Their line names it always: toggle the transpose of one operand of one matrix product, or sum over other
dimensions, and see whether the line then gives what the step should give.

Guarantees:

* nothing the student wrote is executed. Their answer cell's text is parsed, and a variable's top-level
  assignments are evaluated here only if every node is a name, a number, arithmetic, a matrix product, a
  transpose (`.T`, `.mT`, `.transpose(a, b)`, `.t()`), a `.clone()` or a `.sum`/`.mean` over constant
  dimensions: a small
  evaluator of those operations on tensors, never `exec`. Anything else (another call, a subscript, a loop
  around the line) and the variable gets no hint from here;
* the names are bound to values only: the student's own gradients of this exercise as their run brought them
  back, the released forward pass's tensors and the run's parameters;
* a hint is given only where the statements as written reproduce the student's value and one change gives the
  value the step should have (its local reference, which starts from the student's own gradients above it):
  the message then quotes the student's code and the change;
* an intermediate larger than the largest tensor involved (times 64) stops the evaluation: a line cannot make
  the grader allocate what the run itself did not.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from grader.assignment import Assignment
from grader.mistakes import untransposed
from grader.plan import Plan
from grader.reference.forward import LOCK, reference_namespace
from grader.rubric import Exercise, Rubric
from grader.runs import Captured, Key, LocalGradient, OperandHint
from grader.scan import as_python

_GROWTH = 64
"""How many times the largest tensor a line reads its intermediates may be."""
_REPRODUCE_RTOL = 1e-5
"""How close the line as written must come to the student's captured value (the same code, the same values)."""
_MATCH_RTOL = 1e-4
"""How close a changed line must come to the step's reference, relative to the reference's largest entry."""


class _Unsupported(Exception):
    """The line holds something the evaluator does not evaluate (or would grow too large): no hint from it."""


@dataclass(frozen=True)
class _Change:
    """One change to a line: `node` (by position in the walk) replaced as `kind` says."""

    index: int
    """The node's position in `ast.walk` order of the statements."""
    kind: str
    """`left`/`right`: toggle that operand's transpose; `dims`: sum over `dims` instead."""
    dims: tuple[int, ...] = ()


def operand_hints(
    assignment: Assignment, params: dict[str, object], plan: Plan, captured: Captured, refs: dict[Key, object]
) -> dict[Key, object]:
    """Per wrong gradient of a plain exercise whose line can be read (see the module's guarantees): the mistake
    named in the student's own code (`OperandHint` -> str)."""
    rubric = assignment.rubric
    out: dict[Key, object] = {}
    plain = [ex for ex in rubric.exercises if ex.plain and captured.reached(ex.id)]
    if not plain:
        return out
    with LOCK:
        forward = {
            k: (v.detach() if isinstance(v, torch.Tensor) else v)
            for k, v in reference_namespace(assignment, tuple(params.items())).items()
            if isinstance(v, torch.Tensor | int | float) and not isinstance(v, bool)
        }
    for ex in plain:
        capture = next((c for c in plan.captures if c.exercise == ex.id), None)
        if capture is None or capture.start >= len(plan.cells):
            continue
        tree = as_python(plan.cells[capture.start].source)[1]  # (None: it does not parse, whatever is in it)
        if tree is None:
            continue
        answers = _answers(rubric, ex, captured)
        env = {**forward, **{k: v for k, v in params.items() if type(v) in (int, float)}, **answers}
        for var in ex.variables:
            value = captured.values.get((ex.id, var.name))
            value = value if type(value) is torch.Tensor else None
            target = refs.get(LocalGradient(ex.id, var.of), refs.get(var.of))
            if value is None or not isinstance(target, torch.Tensor) or _matches(value, target):
                continue
            statements = _assignments(tree, var.name)
            if not statements:
                continue
            try:
                hint = _named_change(statements, var.name, env, value, target)
            except Exception:  # (a hint is never worth a grade: whatever the values do here, the verdict stands)
                hint = ""
            if hint:
                out[OperandHint(ex.id, var.name)] = hint
    return out


def _answers(rubric: Rubric, ex: Exercise, captured: Captured) -> dict[str, torch.Tensor]:
    """The student's gradients a line of `ex` may read: every plain exercise's answers the run brought back (a
    later exercise reads an earlier one's, `d_hpreact` in a BatchNorm in one go), `ex`'s own over the others."""
    out: dict[str, torch.Tensor] = {}
    for other in [*(e for e in rubric.exercises if e.plain and e.id != ex.id), ex]:
        for v in other.variables:
            value = captured.values.get((other.id, v.name))
            if type(value) is torch.Tensor:
                out[v.name] = value
    return out


def _assignments(tree: ast.Module, name: str) -> list[ast.stmt]:
    """The top-level statements that assign `name` (`=`, then `+=` or `-=`), from the last plain `=` on; [] where
    anything else assigns it (a loop, a tuple, a function): its value then depends on more than these lines."""
    chain: list[ast.stmt] = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and [_target(t) for t in statement.targets] == [name]:
            chain = [statement]
        elif isinstance(statement, ast.AugAssign) and _target(statement.target) == name:
            if not chain or not isinstance(statement.op, ast.Add | ast.Sub):
                return []
            chain.append(statement)
        elif any(
            isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
            for node in ast.walk(statement)
        ):
            return []
    return chain


def _target(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def _named_change(
    statements: list[ast.stmt], name: str, env: Mapping[str, object], value: torch.Tensor, target: torch.Tensor
) -> str:
    """The one change to `statements` that makes them give `target`, worded; "" where the statements as written
    do not give `value` or no single change gives `target`."""
    try:
        written = _run(statements, name, env, None)
    except _Unsupported:
        return ""
    if not _reproduces(written, value):
        return ""
    for change, wording in _changes(statements, name, env):
        try:
            changed = _run(statements, name, env, change)
        except _Unsupported:
            continue
        if _matches(changed, target):
            return wording
    return ""


def _reproduces(a: object, b: torch.Tensor) -> bool:
    return _close(a, b, _REPRODUCE_RTOL)


def _matches(a: object, b: torch.Tensor) -> bool:
    return _close(a, b, _MATCH_RTOL)


def _close(a: object, b: torch.Tensor, rtol: float) -> bool:
    """`a` equals `b` within `rtol`, relative to `b`'s largest entry too; never for values that are not finite (a
    NaN or an infinity in an answer or a reference is no value to name a mistake by)."""
    if not isinstance(a, torch.Tensor) or a.shape != b.shape or not b.numel():
        return False
    x, y = a.detach().double(), b.detach().double()
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
        return False
    return bool(torch.allclose(x, y, rtol=rtol, atol=rtol * float(y.abs().max())))


def _changes(statements: list[ast.stmt], name: str, env: Mapping[str, object]) -> Iterator[tuple[_Change, str]]:
    """Every single change worth trying, with the words that name it where it turns out to be the mistake."""
    nodes = [node for s in statements for node in ast.walk(s)]
    ndims = _receiver_dims(statements, name, env)
    for index, node in enumerate(nodes):
        if _is_matmul(node):
            left, right = _operands(node)
            for side, operand in (("left", left), ("right", right)):
                inner = untransposed(operand)
                text = ast.unparse(operand)
                product = ast.unparse(node)
                if inner is not None:
                    wording = (
                        f"a transpose too many in the matrix product `{product}`: with `{ast.unparse(inner)}` "
                        f"in place of `{text}` it gives the right gradient"
                    )
                else:
                    wording = (
                        f"a transpose missing in the matrix product `{product}`: with `{text}` transposed "
                        f"(`{text}.transpose(-2, -1)`) it gives the right gradient"
                    )
                yield _Change(index, side), wording
        elif _is_reduction(node) and index in ndims:
            assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            written = _dims(node, ndims[index])
            if written is None:
                continue
            for count in range(1, ndims[index] + 1):
                for dims in itertools.combinations(range(ndims[index]), count):
                    if dims == written:
                        continue
                    what = "sum" if node.func.attr == "sum" else "mean"
                    yield (
                        _Change(index, "dims", dims),
                        f"the {what} in `{ast.unparse(node)}` is over the wrong dimension"
                        f"{'s' if len(written) > 1 else ''}: over dimension{'s' if len(dims) > 1 else ''} "
                        f"{_listed(dims)} it gives the right gradient",
                    )


def _listed(dims: tuple[int, ...]) -> str:
    return " and ".join(map(str, dims)) if len(dims) <= 2 else ", ".join(map(str, dims))


def _receiver_dims(statements: list[ast.stmt], name: str, env: Mapping[str, object]) -> dict[int, int]:
    """For every `.sum`/`.mean` in `statements` (by walk position): the number of dimensions of what it reduces,
    from the line as written."""
    seen: dict[int, int] = {}
    try:
        _run(statements, name, env, None, seen)
    except _Unsupported:
        return {}
    return seen


def _dims(call: ast.Call, ndim: int) -> tuple[int, ...] | None:
    """The dimensions a `.sum(...)` reduces, non-negative and sorted; None where they are not constants."""
    given = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "dim"), None)
    if given is None:
        return tuple(range(ndim))
    try:
        dims = ast.literal_eval(given)
    except ValueError:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not all(type(d) is int and -ndim <= d < ndim for d in dims):
        return None
    return tuple(sorted({d % ndim for d in dims}))


def _is_matmul(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "matmul"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
        and len(node.args) == 2
    )


def _operands(node: ast.AST) -> tuple[ast.expr, ast.expr]:
    if isinstance(node, ast.BinOp):
        return node.left, node.right
    assert isinstance(node, ast.Call)
    return node.args[0], node.args[1]


def _is_reduction(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("sum", "mean")


def _run(
    statements: list[ast.stmt],
    name: str,
    env: Mapping[str, object],
    change: _Change | None,
    dims_seen: dict[int, int] | None = None,
) -> object:
    """The value `statements` leave in `name`, with `change` made; raises _Unsupported."""
    nodes = [node for s in statements for node in ast.walk(s)]
    evaluator = _Evaluator(
        env, {id(n): i for i, n in enumerate(nodes)}, change, dims_seen if dims_seen is not None else {}
    )
    value: object = None
    for statement in statements:
        assert isinstance(statement, ast.Assign | ast.AugAssign)
        result = evaluator.eval(statement.value)
        value = result if isinstance(statement, ast.Assign) else _arith(statement.op, value, result)
        evaluator.bind(name, value)
    return value


class _Evaluator:
    """Arithmetic, matrix products, transposes and reductions on the values of `env`; nothing else."""

    def __init__(
        self, env: Mapping[str, object], positions: dict[int, int], change: _Change | None, dims_seen: dict[int, int]
    ):
        self.env = dict(env)
        self.positions = positions
        self.change = change
        self.dims_seen = dims_seen
        tensors = [v.numel() for v in env.values() if isinstance(v, torch.Tensor)]
        self.limit = _GROWTH * max(tensors, default=1)

    def bind(self, name: str, value: object) -> None:
        self.env[name] = value

    def _changed(self, node: ast.AST) -> _Change | None:
        """The change to make at `node`, if it is the changed one."""
        change = self.change
        return change if change is not None and self.positions.get(id(node)) == change.index else None

    def eval(self, node: ast.AST) -> object:
        result = self._eval(node)
        if isinstance(result, torch.Tensor) and result.numel() > self.limit:
            raise _Unsupported
        return result

    def _eval(self, node: ast.AST) -> object:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.env:
                raise _Unsupported
            return self.env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.eval(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand  # type: ignore[operator]  # a tensor or a number, as eval returns; anything else raised above
        if _is_matmul(node):
            left, right = (self.eval(x) for x in _operands(node))
            if not isinstance(left, torch.Tensor) or not isinstance(right, torch.Tensor):
                raise _Unsupported
            change = self._changed(node)
            if change is not None and change.kind == "left":
                left = self._toggled(_operands(node)[0], left)
            elif change is not None and change.kind == "right":
                right = self._toggled(_operands(node)[1], right)
            try:
                return left @ right
            except RuntimeError:
                raise _Unsupported from None
        if isinstance(node, ast.BinOp):
            return _arith(node.op, self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.Attribute) and node.attr in ("T", "mT"):
            return _transposed(self.eval(node.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return self._method(node, node.func)
        raise _Unsupported

    def _toggled(self, operand: ast.expr, value: torch.Tensor) -> torch.Tensor:
        inner = untransposed(operand)
        return self.eval(inner) if inner is not None else _transposed(value)  # type: ignore[return-value]  # the operand's own value: a tensor

    def _method(self, node: ast.Call, func: ast.Attribute) -> object:
        receiver = self.eval(func.value)
        if not isinstance(receiver, torch.Tensor):
            raise _Unsupported
        if func.attr in ("clone", "detach") and not node.args and not node.keywords:
            return receiver
        if func.attr == "t" and not node.args and not node.keywords:
            return _transposed(receiver)
        if func.attr == "transpose" and len(node.args) == 2 and not node.keywords:
            a, b = (self._constant(x) for x in node.args)
            try:
                return receiver.transpose(a, b)  # type: ignore[arg-type]  # constants; a wrong one raises, caught below
            except (IndexError, RuntimeError):
                raise _Unsupported from None
        if func.attr in ("sum", "mean"):
            position = self.positions.get(id(node))
            if position is not None:
                self.dims_seen[position] = receiver.dim()
            dims = _dims(node, receiver.dim())
            keywords = {k.arg: self._constant(k.value) for k in node.keywords if k.arg != "dim"}
            if dims is None or set(keywords) - {"keepdim"} or len(node.args) > 2:
                raise _Unsupported
            keepdim = bool(keywords.get("keepdim", self._constant(node.args[1]) if len(node.args) == 2 else False))
            change = self._changed(node)
            if change is not None and change.kind == "dims":
                dims = change.dims
            reduce = receiver.sum if func.attr == "sum" else receiver.mean
            return reduce(dim=dims, keepdim=keepdim)
        raise _Unsupported

    def _constant(self, node: ast.expr) -> object:
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise _Unsupported from None


def _transposed(value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        raise _Unsupported
    return value.transpose(-2, -1)


_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def _arith(op: ast.operator, a: object, b: object) -> object:
    """`a op b` for tensors and numbers only."""
    fn = _OPS.get(type(op))
    if fn is None or not all(isinstance(x, torch.Tensor | int | float) and not isinstance(x, bool) for x in (a, b)):
        raise _Unsupported
    if isinstance(op, ast.Pow) and not isinstance(a, torch.Tensor) and isinstance(b, int | float) and abs(b) > 64:
        raise _Unsupported  # (a number to a huge power: nothing a gradient's line needs)
    try:
        return fn(a, b)
    except (RuntimeError, ZeroDivisionError, OverflowError):
        raise _Unsupported from None
