"""For `grader validate`: the typical student mistakes, derived from an instructor's answer cell. Pure: `ast`
and `re`, nothing runs.

A mistake is the solution with one statement changed the way students get it wrong: a transpose dropped or
added, a sum over the wrong axis or forgotten, keepdim toggled, a factor (2, n, a square root) off, the sign
flipped, `+=` written `=`, a term dropped, n for n - 1. `grader validate` grades each mutated notebook and
reports whether the rubric catches it. Whether a mutant differs from the solution at all (the transpose of a
square matrix, keepdim on a sum that broadcasts either way) is the validate step's business, not this module's.

`derive` guarantees:

* only assignments (`=`, `+=`, ...) lying wholly between a `### BEGIN SOLUTION` line and the next
  `### END SOLUTION` line change, at any depth (in a `def`, a loop, an `if`); a cell without markers, or one
  that does not parse, gives no mistakes;
* a mistake changes one sub-expression of one statement, or the statement's `+=` (to `=`, or the whole
  `+=`/`-=`/`/=` line to `pass`), and keeps every other character of the cell: the statement's span becomes
  `ast.unparse` of the mutated statement, at the same column;
* every `source` compiles; no mistake leaves its statement as it was, and no two on one line share an `after`;
* mistakes come by line, then in `KINDS` order; each rule (one way of making a kind of mistake) gives at most
  `CAP` per statement, so that a 30-line cell gives a couple of hundred mistakes, not thousands.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

KINDS = ("transpose", "sum_axis", "missing_sum", "keepdim", "factor", "sign", "accumulate", "dropped_term", "bessel")
"""The kinds of mistake, in the order `derive` lists a statement's mistakes."""
CAP = 2
"""At most this many mistakes per rule per statement, outermost first, sizes and divisors before named factors.
Each kind is one rule, except `factor` (times 2 or 1/2; a factor or divisor dropped; a square root dropped) and
`sign` (the right-hand side negated; a unary minus dropped)."""
SHORT = 60
"""A description quotes the largest enclosing expression up to this long; none if the changed one is longer."""

_BEGIN, _END = re.compile(r"\s*### BEGIN SOLUTION"), re.compile(r"\s*### END SOLUTION")
# Right-hand sides that doubling or negating makes no student's mistake of: containers, strings, booleans; nor
# zeros, which stay zeros.
_NOT_ARITHMETIC = (ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NOT_NUMBERS = (ast.JoinedStr, ast.Compare, ast.BoolOp, ast.Lambda)
_ZEROS = ("zeros", "zeros_like", "empty", "empty_like")
_REDUCERS = ("sum", "mean", "var", "std")
_AXIS = ("dim", "axis")

_Where = dict[int, tuple[ast.AST, str, int | None]]
"""id(node) -> (parent, field, index in the field's list or None): where to put a node's replacement."""


@dataclass(frozen=True)
class Mistake:
    """One typical mistake: the answer cell with one statement changed."""

    kind: str
    """One of `KINDS`."""
    cell: str
    """The answer cell's grade_id."""
    line: int
    """The 1-based line of the cell where the changed statement starts."""
    variable: str | None
    """The graded variable the statement assigns (`d_W` for `d_W = ...`, `d_W += ...`, `d_W[i] = ...`), or None."""
    before: str
    """The statement as written, on one line."""
    after: str
    """The mutated statement."""
    source: str
    """The whole mutated cell."""
    target: str
    """What the statement assigns, graded or not: `d_W`, `d_a`, `self.d_weight`."""
    change: str
    """The change in a few words, quoted where short: `transpose dropped (h.T @ d_logits -> h @ d_logits)`."""

    def describe(self) -> str:
        """What is assigned, and the change: `d_W2: transpose dropped (h.T @ d_logits -> h @ d_logits)`."""
        return f"{self.target}: {self.change}"


@dataclass(frozen=True)
class _Edit:
    """One candidate change: `old`, a node of the right-hand side (or the statement itself), becomes `new`."""

    kind: str
    rule: str
    words: str
    old: ast.AST
    new: ast.AST
    rank: int = 0
    """Lower first within a rule: the likelier mistakes are the ones the cap keeps."""


def derive(cell: str, source: str, graded: Collection[str], sizes: Mapping[str, int] = {}) -> list[Mistake]:
    """The typical mistakes in answer cell `cell` (its grade_id), whose solution is `source`.

    Parameters:
        graded: the graded variables; a mistake in a statement assigning another name has `variable` None.
        sizes: the notebook's sizes (`{"n": 32}`), only to word descriptions: `division by n (= 32) dropped`.

    Returns:
        One `Mistake` per change, by line then `KINDS`; [] when the cell has no solution markers or does not parse.
    """
    solution = _solution_lines(source)
    if not solution:
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: list[Mistake] = []
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.Assign | ast.AugAssign):
            continue
        if set(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)) <= solution:
            found += _mutate(stmt, cell, source, graded, sizes)
    return sorted(found, key=lambda m: (m.line, KINDS.index(m.kind)))


def _solution_lines(source: str) -> set[int]:
    """The numbers of the lines strictly between each BEGIN SOLUTION and the END SOLUTION after it."""
    inside, begin = set(), None
    for number, line in enumerate(source.split("\n"), 1):
        if _BEGIN.match(line):
            begin = number
        elif _END.match(line) and begin is not None:
            inside |= set(range(begin + 1, number))
            begin = None
    return inside


def _mutate(
    stmt: ast.Assign | ast.AugAssign, cell: str, source: str, graded: Collection[str], sizes: Mapping[str, int]
) -> list[Mistake]:
    """The mistakes of one statement: each edit made in place, rendered, and undone."""
    before = " ".join(line.strip() for line in (ast.get_source_segment(source, stmt) or "").splitlines())
    seen, found, taken = {ast.unparse(stmt)}, [], dict[str, int]()
    for assigned, edits, where in _sides(stmt, sizes):
        names = _names(assigned)
        name = next((n for n in names if n in graded), next((n for n in names if n != "_"), names[0]))
        for edit in edits:
            if taken.get(edit.rule, 0) >= CAP:
                continue
            after, quoted = _apply(stmt, edit, where, before)
            mutated = _splice(source, stmt, after)
            if after in seen or not _compiles(mutated):
                continue
            seen.add(after)
            taken[edit.rule] = taken.get(edit.rule, 0) + 1
            change = f"{edit.words} ({quoted})" if quoted else edit.words
            variable = name if name in graded else None
            found.append(Mistake(edit.kind, cell, stmt.lineno, variable, before, after, mutated, name, change))
    return found


def _names(target: ast.expr) -> list[str]:
    """The names an assignment target binds: `d_C` for `d_C[i]`, `self.d_weight` for itself, each of a tuple's."""
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _names(element)]
    if isinstance(target, ast.Subscript | ast.Starred):
        return _names(target.value)
    return [ast.unparse(target)]


def _sides(stmt: ast.Assign | ast.AugAssign, sizes: Mapping[str, int]) -> list[tuple[ast.expr, list[_Edit], _Where]]:
    """(what is assigned, its candidate edits, where each node sits) per right-hand side: one, or one per element
    when a tuple is assigned to a tuple as long (`a, b = x * 2, y.sum(0)`)."""
    target, value = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target, stmt.value
    pairs: list[tuple[ast.expr, ast.expr, tuple[ast.AST, str, int | None], bool]]
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        pairs = [(t, v, (value, "elts", i), True) for i, (t, v) in enumerate(zip(target.elts, value.elts))]
    else:
        # Unpacking a call's result (`loss, h = mlp(...)`): negating or doubling a tuple is no student's mistake.
        pairs = [(target, value, (stmt, "value", None), not isinstance(target, ast.Tuple | ast.List))]
    sides = []
    for assigned, root, slot, whole in pairs:
        nodes, where = _walk(root, slot)
        edits = _edits(root, nodes, where, whole and _arithmetic(root), sizes)
        sides.append((assigned, edits + _augmented(stmt, sizes), where))
    return sides


def _augmented(stmt: ast.stmt, sizes: Mapping[str, int]) -> list[_Edit]:
    """`x += e` written `x = e`; a `+=` or `-=` line forgotten (a branch's gradient); a `/= n` line forgotten."""
    if not isinstance(stmt, ast.AugAssign):
        return []
    skipped, op = ast.Pass(), type(stmt.op)
    edits = []
    if op is ast.Add:
        assigned = ast.Assign([stmt.target], stmt.value, lineno=stmt.lineno)
        edits.append(_Edit("accumulate", "accumulate", "`+=` written `=`", stmt, assigned))
    if op in (ast.Add, ast.Sub):
        edits.append(_Edit("dropped_term", "term", "line forgotten", stmt, skipped))
    if op in (ast.Mult, ast.Div) and _factor(stmt.value):
        words = f"{'factor' if op is ast.Mult else 'division by'} {_quote(stmt.value, sizes)} dropped"
        edits.append(_Edit("factor", "drop", words, stmt, skipped))
    return edits


def _walk(root: ast.expr, slot: tuple[ast.AST, str, int | None]) -> tuple[list[ast.expr], _Where]:
    """The sub-expressions of `root`, outermost first, and where each sits. Indices (`x[t - 1]`), keyword values
    (`num_classes=...`) and comprehension clauses are not entered: they are bookkeeping, not the gradient's maths."""
    nodes, where = [root], {id(root): slot}
    for node in nodes:
        for field, value in ast.iter_fields(node):
            if isinstance(node, ast.Subscript) and field == "slice":
                continue
            for index, child in enumerate(value) if isinstance(value, list) else [(None, value)]:
                if isinstance(child, ast.expr):
                    where[id(child)] = (node, field, index)
                    nodes.append(child)
    return nodes, where


def _arithmetic(root: ast.expr) -> bool:
    """Whether the right-hand side is a number or tensor that doubling or negating changes."""
    if isinstance(root, _NOT_ARITHMETIC + _NOT_NUMBERS):
        return False
    if isinstance(root, ast.Constant):
        return _literal(root) is not None
    return not (isinstance(root, ast.Call) and _called(root) in _ZEROS)


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _apply(stmt: ast.stmt, edit: _Edit, where: _Where, before: str) -> tuple[str, str]:
    """The mutated statement, and the change quoted `old -> new` in the largest enclosing expression up to `SHORT`
    long (nothing if the changed one is longer). The statement is left as it was."""
    if edit.old is stmt:
        after = ast.unparse(edit.new)
        return after, f"{before} -> {after}" if len(before) <= SHORT else ""
    shown = edit.old
    # (The side's root is the outermost node in `where`: the quote never takes in the statement or a tuple.)
    while id(parent := where[id(shown)][0]) in where and len(ast.unparse(parent)) <= SHORT:
        shown = parent
    old_text = ast.unparse(shown)
    parent, field, index = where[id(edit.old)]
    _put(parent, field, index, edit.new)
    try:
        new_text = ast.unparse(edit.new if shown is edit.old else shown)
        return ast.unparse(stmt), f"{old_text} -> {new_text}" if len(old_text) <= SHORT else ""
    finally:
        _put(parent, field, index, edit.old)


def _put(parent: ast.AST, field: str, index: int | None, node: ast.AST) -> None:
    if index is None:
        setattr(parent, field, node)
    else:
        getattr(parent, field)[index] = node


def _splice(source: str, stmt: ast.stmt, text: str) -> str:
    """`source` with the statement's span replaced by `text`. (Column offsets count UTF-8 bytes.)"""
    lines, end = source.split("\n"), stmt.end_lineno or stmt.lineno
    first, last = lines[stmt.lineno - 1].encode(), lines[end - 1].encode()
    line = first[: stmt.col_offset].decode() + text + last[stmt.end_col_offset or len(last) :].decode()
    return "\n".join([*lines[: stmt.lineno - 1], line, *lines[end:]])


def _compiles(source: str) -> bool:
    try:
        compile(source, "<cell>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _edits(root: ast.expr, nodes: list[ast.expr], where: _Where, whole: bool, sizes: Mapping[str, int]) -> list[_Edit]:
    """Every candidate edit of one right-hand side, in `KINDS` order, each rule's likeliest first."""
    edits = _transposes(nodes) + _reductions(root, nodes, where) + _factors(root, nodes, whole, sizes)
    edits += _signs(root, nodes, where, whole) + _terms(nodes, sizes)
    return sorted(edits, key=lambda e: (KINDS.index(e.kind), e.rank))


def _transposes(nodes: list[ast.expr]) -> list[_Edit]:
    """A transpose of a matrix product's operand dropped; `.T` added to an operand that is a plain name."""
    edits = []
    for node in nodes:
        operands: list[ast.expr] = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            operands = [node.left, node.right]
        elif isinstance(node, ast.Call) and _called(node) in ("matmul", "mm") and len(node.args) == 2:
            operands = node.args
        for operand in operands:
            if (bare := untransposed(operand)) is not None:
                edits.append(_Edit("transpose", "transpose", "transpose dropped", operand, bare))
            elif isinstance(operand, ast.Name | ast.Attribute):
                added = ast.Attribute(operand, "T", ast.Load())
                edits.append(_Edit("transpose", "transpose", "transpose added", operand, added, rank=1))
    return edits


def untransposed(node: ast.expr) -> ast.expr | None:
    """X for `X.T`, `X.mT`, `X.t()`, `X.transpose(a, b)`; None for anything else."""
    if isinstance(node, ast.Attribute) and node.attr in ("T", "mT"):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.value if (node.func.attr, len(node.args)) in (("t", 0), ("transpose", 2)) else None
    return None


def _reductions(root: ast.expr, nodes: list[ast.expr], where: _Where) -> list[_Edit]:
    """Reductions over an integer axis: a sum or mean over another axis; a sum forgotten; keepdim toggled."""
    axes, missing, keepdims = [], [], []
    for node in nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _REDUCERS):
            continue
        if (k := _axis(node)) is None:
            continue
        name, other = node.func.attr, 1 if k == 0 else k - 1 if k > 0 else -2 if k == -1 else k + 1
        if name in ("sum", "mean"):
            axes.append(
                _Edit("sum_axis", "sum_axis", f"{name} over axis {other}, not {k}", node, _with_axis(node, other))
            )
        if name == "sum" and _is_factor_of(node, root, where):
            missing.append(_Edit("missing_sum", "missing_sum", f"sum over axis {k} forgotten", node, node.func.value))
        kept = [kw for kw in node.keywords if kw.arg != "keepdim"]
        if len(kept) < len(node.keywords):
            keepdims.append(
                _Edit("keepdim", "keepdim", "keepdim=True dropped", node, ast.Call(node.func, node.args, kept))
            )
        else:
            keyword = ast.keyword("keepdim", ast.Constant(True))
            call = ast.Call(node.func, node.args, [*node.keywords, keyword])
            keepdims.append(_Edit("keepdim", "keepdim", "keepdim=True added", node, call))
    return axes + missing + keepdims


def _axis(call: ast.Call) -> int | None:
    """The integer axis of `x.sum(k, ...)` or `x.sum(dim=k)`; None when there is none."""
    if call.args:
        return _int_of(call.args[0])
    return next((_int_of(kw.value) for kw in call.keywords if kw.arg in _AXIS), None)


def _with_axis(call: ast.Call, k: int) -> ast.Call:
    axis = ast.Constant(k) if k >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-k))
    if call.args:
        return ast.Call(call.func, [axis, *call.args[1:]], call.keywords)
    return ast.Call(call.func, [], [ast.keyword(kw.arg, axis) if kw.arg in _AXIS else kw for kw in call.keywords])


def _literal(node: ast.expr) -> int | float | None:
    """The value of a number as written (`2`, `-0.5`); None for anything else, booleans included."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        return None if value is None else -value
    constant = node.value if isinstance(node, ast.Constant) else None
    return constant if isinstance(constant, int | float) and not isinstance(constant, bool) else None


def _int_of(node: ast.expr) -> int | None:
    value = _literal(node)
    return value if isinstance(value, int) else None


def _factor(node: ast.expr) -> bool:
    """Whether `node` is what a student forgets to multiply or divide by: a name, a number, `n - 1`, or a root
    of a name (`head_size ** -0.5`, `math.sqrt(d)`: attention's scale)."""
    if isinstance(node, ast.Name) or _literal(node) is not None or _minus_one(node) is not None:
        return True
    rooted = _rooted(node)
    return rooted is not None and (isinstance(rooted, ast.Name) or _literal(rooted) is not None)


def _is_factor_of(node: ast.expr, root: ast.expr, where: _Where) -> bool:
    """Whether `node` is `root` or reached from it through products, quotients and negations only."""
    current: ast.AST = node
    while current is not root:
        current = where[id(current)][0]
        product = isinstance(current, ast.BinOp) and isinstance(current.op, ast.Mult | ast.Div)
        if not (product or (isinstance(current, ast.UnaryOp) and isinstance(current.op, ast.USub))):
            return False
    return True


def _minus_one(node: ast.expr) -> ast.Name | None:
    """n for `n - 1` (n a name); None for anything else."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and isinstance(node.left, ast.Name):
        return node.left if _int_of(node.right) == 1 else None
    return None


def _quote(node: ast.expr, sizes: Mapping[str, int]) -> str:
    """The expression, with its value where it is a size: `n (= 32)`, `n - 1 (= 31)`."""
    text = ast.unparse(node)
    if isinstance(node, ast.Name) and node.id in sizes:
        return f"{text} (= {sizes[node.id]})"
    if (n := _minus_one(node)) is not None and n.id in sizes:
        return f"{text} (= {sizes[n.id] - 1})"
    return text


def _factors(root: ast.expr, nodes: list[ast.expr], whole: bool, sizes: Mapping[str, int]) -> list[_Edit]:
    """Times 2 or 1/2; a factor or divisor (a name, a number, `n - 1`) dropped; a square root dropped."""
    edits = []
    if whole:
        for text, factor in (("2", 2), ("1/2", 0.5)):
            scaled = ast.BinOp(ast.Constant(factor), ast.Mult(), root)
            edits.append(_Edit("factor", "scale", f"times {text}", root, scaled))
    for node in nodes:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
            product = isinstance(node.op, ast.Mult)
            for dropped, kept in [(node.right, node.left)] + ([(node.left, node.right)] if product else []):
                # (`W * 0.01` -> `0.01` is no one's mistake; `1.0 / n` -> `1.0` is)
                if _factor(dropped) and not (product and _literal(kept) is not None and _literal(dropped) is None):
                    # A size or a divisor is a forgotten normalisation; a named factor may be a whole local gradient.
                    plain = product and isinstance(dropped, ast.Name) and dropped.id not in sizes
                    words = f"{'factor' if product else 'division by'} {_quote(dropped, sizes)} dropped"
                    edits.append(_Edit("factor", "drop", words, node, kept, rank=int(plain)))
        if (operand := _rooted(node)) is not None:
            power = isinstance(node, ast.BinOp) and f"power ** {ast.unparse(node.right)} dropped"
            edits.append(_Edit("factor", "root", power or "square root dropped", node, operand))
    return edits


def _rooted(node: ast.expr) -> ast.expr | None:
    """x for `x ** 0.5`, `x ** -0.5`, `torch.sqrt(x)` and `x.sqrt()`; None for anything else."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return node.left if _literal(node.right) in (0.5, -0.5) else None
    if not (isinstance(node, ast.Call) and _called(node) == "sqrt"):
        return None
    if len(node.args) == 1:
        return node.args[0]
    return node.func.value if isinstance(node.func, ast.Attribute) and not node.args else None


def _signs(root: ast.expr, nodes: list[ast.expr], where: _Where, whole: bool) -> list[_Edit]:
    """The right-hand side negated; a unary minus dropped (not an exponent's, nor a call's integer argument's)."""
    edits = []
    if whole:
        negated = root.operand if isinstance(root, ast.UnaryOp) and isinstance(root.op, ast.USub) else None
        edits.append(_Edit("sign", "negate", "sign flipped", root, negated or ast.UnaryOp(ast.USub(), root)))
    for node in nodes:
        if not (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)):
            continue
        parent, field, _ = where[id(node)]
        exponent = isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Pow) and field == "right"
        if not exponent and not (isinstance(parent, ast.Call) and _int_of(node) is not None):
            edits.append(_Edit("sign", "unary", "unary minus dropped", node, node.operand))
    return edits


def _terms(nodes: list[ast.expr], sizes: Mapping[str, int]) -> list[_Edit]:
    """A term of a sum or difference dropped (`a - b` -> `a` or `-b`); `n - 1` written `n` (Bessel's correction)."""
    edits = []
    for node in nodes:
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub)):
            continue
        if (n := _minus_one(node)) is not None:
            edits.append(_Edit("bessel", "bessel", f"{_quote(node, sizes)} written {_quote(n, sizes)}", node, n))
            continue
        edits.append(_Edit("dropped_term", "term", f"term {ast.unparse(node.right)} dropped", node, node.left))
        # The left of `a - b - c` is `a - b`: dropping it would drop two terms, and the inner node drops each one.
        if not (isinstance(node.left, ast.BinOp) and isinstance(node.left.op, ast.Add | ast.Sub)):
            kept = ast.UnaryOp(ast.USub(), node.right) if isinstance(node.op, ast.Sub) else node.right
            edits.append(_Edit("dropped_term", "term", f"term {ast.unparse(node.left)} dropped", node, kept))
    return edits
