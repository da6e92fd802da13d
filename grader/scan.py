"""A static look at answer cells: does the code reach for autograd, or for tricks that could hide it?

Works on the Python syntax tree (magics translated by IPython first), never on the raw text. The
run-time guard in the child refuses autograd calls; this scan also catches what a run cannot see,
such as reading `.grad` or building a name with `getattr` so that no call happens by its plain name.
"""

from __future__ import annotations

import ast
import functools
import threading
from dataclasses import dataclass

from IPython.core.inputtransformer2 import TransformerManager

AUTOGRAD_ATTRIBUTES = frozenset(
    {
        "grad",
        "backward",
        "retain_grad",
        "requires_grad_",
        "enable_grad",
        "set_grad_enabled",
        "autograd",
        "func",
        "grad_fn",
        "next_functions",
    }
)
HIDING_NAMES = frozenset({"importlib", "__builtins__", "gc", "attrgetter", "methodcaller", "inspect", "ctypes"})
AUTOGRAD_MODULES = ("torch.autograd", "torch.func", "functorch", "torch._functorch")
DYNAMIC_CALLS = frozenset({"exec", "eval", "compile", "__import__", "globals", "vars", "locals"})
DYNAMIC_ATTRIBUTE_CALLS = frozenset({"getattr", "setattr", "delattr"})
DUNDER_ESCAPES = frozenset(
    {
        "__dict__",
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "__getattribute__",
        "__code__",
        "__closure__",
        "__class__",
        "__bases__",
        "__mro__",
    }
)


@dataclass(frozen=True)
class Finding:
    """One flagged construct in an answer cell."""

    line: int
    """Line within the cell."""
    status: str
    """`autograd_used` or `suspicious`."""
    what: str
    """What was found, e.g. `.backward()` or `getattr with a computed name`."""
    targets: tuple[str, ...]
    """Names assigned by the statement it is in (empty if it assigns nothing)."""
    forbidden: bool = False
    """A name the rubric forbids (PyTorch's own version of what the exercise asks to write by hand), not a trick."""


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _targets(stmt: ast.stmt) -> tuple[str, ...]:
    if isinstance(stmt, ast.Assign):
        nodes = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        nodes = [stmt.target]
    else:
        return ()
    names = []
    for target in nodes:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.append(node.id)
    return tuple(names)


def _flags(node: ast.AST, called: set[int]) -> list[tuple[str, str]]:
    """(status, what) for one node; `called`: the ids of the names in call position."""
    if isinstance(node, ast.Attribute):
        if node.attr in AUTOGRAD_ATTRIBUTES:
            dotted = _dotted(node)
            if node.attr in ("autograd", "func") and not dotted.startswith("torch."):
                return []
            return [("autograd_used", f"`.{node.attr}`")]
        if node.attr in DUNDER_ESCAPES:
            return [("suspicious", f"`.{node.attr}`")]
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            return [("suspicious", f"the private attribute `.{node.attr}`")]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom):
            modules += [f"{node.module}.{a.name}" for a in node.names]
        if any(m == mod or m.startswith(mod + ".") for m in modules for mod in AUTOGRAD_MODULES):
            return [("autograd_used", "an import from torch.autograd / torch.func")]
        if any(m.split(".")[0] == "importlib" for m in modules):
            return [("suspicious", "importlib")]
    if (
        isinstance(node, ast.Name)
        and node.id in DYNAMIC_ATTRIBUTE_CALLS | DYNAMIC_CALLS
        and isinstance(node.ctx, ast.Load)
        and id(node) not in called
    ):
        return [("suspicious", f"`{node.id}` used as a value")]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in DYNAMIC_CALLS:
            return [("suspicious", f"`{node.func.id}()`")]
        if node.func.id in DYNAMIC_ATTRIBUTE_CALLS and len(node.args) >= 2:
            name = node.args[1]
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                return [("suspicious", f"`{node.func.id}` with a computed attribute name")]
            if name.value in AUTOGRAD_ATTRIBUTES:
                return [("autograd_used", f"`{node.func.id}(..., {name.value!r})`")]
    if isinstance(node, ast.Name) and node.id == "functorch":
        return [("autograd_used", "`functorch`")]
    if isinstance(node, ast.Name) and node.id in HIDING_NAMES:
        return [("suspicious", f"`{node.id}`")]
    if (
        isinstance(node, ast.Attribute)
        and node.attr in ("modules", "attrgetter", "get_objects")
        and _dotted(node).split(".")[0] in ("sys", "operator", "gc")
    ):
        return [("suspicious", f"`{_dotted(node)}`")]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(m.split(".")[0] in ("gc", "inspect", "ctypes") for m in modules):
            return [("suspicious", "an import of gc, inspect or ctypes")]
        private = [m for m in modules if any(part.startswith("_") for part in m.split("."))]
        if isinstance(node, ast.ImportFrom):
            private += [a.name for a in node.names if a.name.startswith("_")]
        if private:  # `from torch._C import _set_grad_enabled`: the private API, under another name
            return [("suspicious", f"an import of the private `{private[0]}`")]
    return []


PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun"})
"""Cell magics whose body is Python that runs: scanned (and, in lecture notebooks, run) as plain code."""


def python_body(source: str) -> str:
    """The cell with a leading `%%time`/`%%timeit`/`%%capture` line blanked: IPython would turn the body into
    a string, out of sight of a syntax tree. (The line count is kept: line numbers stay right.)"""
    lines = source.split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if (
        first is not None
        and lines[first].lstrip().startswith("%%")
        and lines[first].strip()[2:].split(" ")[0] in PYTHON_CELL_MAGICS
    ):
        lines[first] = "# " + lines[first].strip()  # (a comment: the line count, and numbers, stay)
        return "\n".join(lines)
    return source


_PARSING = threading.Lock()  # CPython 3.11's ast is not thread-safe (gh-106905: "recursion depth mismatch")


def parse(source: str) -> ast.Module:
    """`ast.parse` of plain Python (the released cells the reference steps through), under the same lock."""
    with _PARSING:
        return ast.parse(source)


# A submission's answer cells are read again for each of its runs (its hints, the numbers it writes): its last few
# trees kept. Shared: no caller changes a tree.
@functools.lru_cache(maxsize=32)
def as_python(source: str) -> tuple[str, ast.Module | None]:
    """A cell as IPython runs it (magics and shell escapes turned into calls, a `%%time` body plain) and its syntax
    tree; the tree is None where it does not parse (it will not run either). Every cell of a student's the grader
    reads is parsed here, under the one lock. The tree is shared between callers: never change it."""
    plain = python_body(source)
    try:
        with _PARSING:
            translated = TransformerManager().transform_cell(plain)
            return translated, ast.parse(translated)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return plain, None


# scan and scan_forbidden of a cell come one after the other, and IPython's tokenizer is the slow part of each;
# two trees kept, not more: a cell's tree takes a hundred times its size in memory.
@functools.lru_cache(maxsize=2)
def _tree(source: str) -> ast.Module | None:
    """The cell's syntax tree, as IPython runs it; None where it does not parse."""
    return as_python(source)[1]


@functools.lru_cache(maxsize=4096)  # a batch scans the same released and copied cells again and again
def scan(source: str) -> tuple[Finding, ...]:
    """Every flagged construct in one cell's source, in line order."""
    tree = _tree(source)
    if tree is None:
        return ()  # the run reports the error
    findings: list[Finding] = []

    # names in call position, so that only other uses count as "a value"
    called = {
        id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }

    # Depth first with a list, not recursion: a tree deeper than Python's stack (`x = 1 + 1 + ...` a thousand
    # times parses) must be scanned all the same.
    todo: list[tuple[ast.AST, tuple[str, ...]]] = [(tree, ())]
    while todo:
        node, targets = todo.pop()
        if isinstance(node, ast.stmt):
            targets = _targets(node) or targets
        for status, what in _flags(node, called):
            findings.append(Finding(getattr(node, "lineno", 0), status, what, targets))
        todo += [(child, targets) for child in reversed(list(ast.iter_child_nodes(node)))]
    return tuple(sorted(findings, key=lambda f: f.line))


@functools.lru_cache(maxsize=4096)
def scan_forbidden(source: str, names: tuple[str, ...]) -> tuple[Finding, ...]:
    """Uses of `names` (an assignment's `forbidden`: `batch_norm`, `clip_grad_norm_`) as an attribute (`F.batch_norm`,
    `nn.Linear`) or an import: a bare name is the student's own (their class `Linear` is the exercise)."""
    tree = _tree(source) if names else None
    if tree is None:
        return ()
    findings = []
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.stmt):
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name.split(".")[-1] in names:
                    findings.append(
                        Finding(
                            stmt.lineno,
                            "suspicious",
                            f"PyTorch's own `{alias.name.split('.')[-1]}`",
                            _targets(stmt),
                            forbidden=True,
                        )
                    )
            continue
        for node in ast.iter_child_nodes(stmt):
            for sub in ast.walk(node):
                used = sub.attr if isinstance(sub, ast.Attribute) else None
                if (
                    isinstance(sub, ast.Call)
                    and isinstance(sub.func, ast.Name)
                    and sub.func.id in ("getattr", "setattr")
                    and len(sub.args) >= 2
                    and isinstance(sub.args[1], ast.Constant)
                    and isinstance(sub.args[1].value, str)
                ):
                    used = sub.args[1].value  # getattr(torch.nn, "BatchNorm1d"): the same use, spelled out
                if used in names:
                    findings.append(
                        Finding(
                            getattr(sub, "lineno", stmt.lineno),
                            "suspicious",
                            f"PyTorch's own `{used}`",
                            _targets(stmt),
                            forbidden=True,
                        )
                    )
    return tuple(sorted(set(findings), key=lambda f: f.line))
