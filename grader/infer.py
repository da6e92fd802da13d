"""Stage 0: what a rubric need not say, read from the notebook; and what it says, checked against it.

A rubric holds only choices (points, tolerances, hidden runs, which cells are setup). What the notebook
already says is read from it, by nbgrader's cell metadata and the code of the cells, never by their words:

- `loss`: `loss`;
- an exercise's `cell`: its id; its `variables`: the `d_` names its released answer cell assigns at the top
  level (the `d_x = None` lines), in order; its `test_cell`: the nbgrader test cell (`grade: true`, not an
  answer) after its answer cell;
- `skip_cells`: the test cells, and the locked cells that call `.backward()` (PyTorch's own backward
  pass, there for the self-checks);
- `reference_cells`: the locked code cells before the first answer cell, bar the parameters cell, the
  setup cells and the skipped ones.

A key the rubric gives is never replaced. `problems` lists what the rubric names that the notebooks do not
have (a cell, an answer cell, a test cell, a parameter), each naming the key and what
exists: the assignment's author's mistakes, never a student's.

Pure: it reads parsed TOML and notebooks, and runs nothing.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator

import nbformat

from grader import notebook
from grader.rubric import Rubric


def _code(nb: nbformat.NotebookNode) -> Iterator[tuple[str, nbformat.NotebookNode]]:
    """(grade_id, cell) of each code cell that has a grade_id, in order."""
    for cell in nb.cells:
        gid = notebook.grade_id(cell)
        if cell.cell_type == "code" and gid:
            yield gid, cell


def _is_test(cell: nbformat.NotebookNode) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return isinstance(meta, dict) and meta.get("grade") is True and meta.get("solution") is not True


def _tree(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:  # (a cell with IPython magics: nothing read from it)
        return None


def _calls_backward(source: str) -> bool:
    tree = _tree(source)
    return tree is not None and any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
        for n in ast.walk(tree)
    )


def assigned(source: str, prefix: str = "d_") -> list[str]:
    """The names starting with `prefix` that `source` assigns at its top level (`=`, `+=`, a tuple), in the
    order of their first assignment."""
    tree = _tree(source)
    out: list[str] = []
    for node in tree.body if tree else ():
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign | ast.AnnAssign)
            else []
        )
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id.startswith(prefix) and name.id not in out:
                    out.append(name.id)
    return out


def defaults(raw: dict, released: nbformat.NotebookNode, solution: nbformat.NotebookNode | None) -> dict:
    """`raw` (parsed TOML) with every key it leaves out that the notebooks decide filled in. Where `raw`
    is not shaped as a rubric, it is returned as it is, for `rubric.parse` to name what is wrong."""
    if not isinstance(raw.get("exercise"), list) or not all(isinstance(e, dict) for e in raw["exercise"]):
        return raw
    out = copy.deepcopy(raw)
    out.setdefault("loss", "loss")
    cells = list(_code(released))
    answers = {gid for gid, c in cells if notebook.is_solution(c)}
    for ex in out["exercise"]:
        if not isinstance(ex.get("id"), str):
            continue
        ex.setdefault("cell", ex["id"])
        if "variables" not in ex and "function" not in ex:
            # (from the release: the `d_x = None` lines students see, the same for the instructor and a
            # student's own check, whatever names the solution uses on its way)
            cell = dict(cells).get(ex["cell"])
            ex["variables"] = assigned(cell.source) if cell is not None else []
        if "test_cell" not in ex:
            after = [gid for gid, _ in cells]
            if ex["cell"] in after:
                for gid, c in cells[after.index(ex["cell"]) + 1 :]:
                    if gid in answers:
                        break
                    if _is_test(c):
                        ex["test_cell"] = gid
                        break
    if "skip_cells" not in out:
        out["skip_cells"] = [
            gid for gid, c in cells if _is_test(c) or (notebook.is_locked(c) and _calls_backward(c.source))
        ]
    if "reference_cells" not in out:
        skip, setup = set(out["skip_cells"]), set(out.get("setup_cells", []))
        reference = []
        for gid, c in cells:
            if gid in answers:
                break
            if notebook.is_locked(c) and gid not in skip and gid not in setup and not notebook.has_tag(c, "parameters"):
                reference.append(gid)
        out["reference_cells"] = reference
    return out


def problems(
    rubric: Rubric,
    released: nbformat.NotebookNode,
    solution: nbformat.NotebookNode | None,
    published: dict[str, object],
) -> list[str]:
    """What `rubric` names that the notebooks do not have: one sentence each, naming the key and what exists."""
    cells = dict(_code(released))
    answers = [gid for gid, c in cells.items() if notebook.is_solution(c)]
    locked = [gid for gid, c in cells.items() if not notebook.is_solution(c)]
    out = []

    def missing(key: str, gids: tuple[str, ...] | list[str], among: list[str]) -> None:
        for gid in gids:
            if gid not in cells:
                out.append(f"{key}: no code cell has grade_id {gid!r} (the code cells: {', '.join(among) or 'none'})")

    missing("setup_cells", rubric.setup_cells, locked)
    missing("reference_cells", rubric.reference_cells, locked)
    missing("no_grad_cells", rubric.no_grad_cells, list(cells))
    missing("skip_cells", rubric.skip_cells, locked)
    for key in rubric.setup_parameters:
        if key not in published:
            out.append(f"setup_parameters: {key!r} is not in the parameters cell (it has {', '.join(published)})")
    for key in rubric.data:
        if key not in published:
            out.append(f"[data] {key}: not a parameter of the notebook (its parameters: {', '.join(published)})")
    for run, values in enumerate(rubric.hidden_runs, start=1):
        for key in values:
            if key not in published:
                out.append(f"hidden run {run}: {key!r} is not a parameter (the parameters: {', '.join(published)})")
    for ex in rubric.exercises:
        where = f"exercise {ex.id!r}"
        if ex.cell not in cells:
            out.append(f"{where}: no answer cell {ex.cell!r} (the answer cells: {', '.join(answers) or 'none'})")
            continue
        if ex.cell not in answers:
            out.append(
                f"{where}: cell {ex.cell!r} is not an answer cell (nbgrader `solution: true`); "
                f"the answer cells: {', '.join(answers) or 'none'}"
            )
        if ex.test_cell is not None and ex.test_cell not in cells:
            tests = [gid for gid, c in cells.items() if _is_test(c)]
            out.append(f"{where}: no test cell {ex.test_cell!r} (the test cells: {', '.join(tests) or 'none'})")
        if not ex.variables:
            out.append(f"{where}: no variables to grade (list them, or assign d_ names in cell {ex.cell!r})")
    return out
