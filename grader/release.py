"""Make a released (student) notebook from an instructor's solution notebook.

Follows nbgrader's conventions, so that nbgrader's `generate_assignment` can take over later:
the lines from `### BEGIN SOLUTION` to `### END SOLUTION` in solution cells become one stub line,
and every output and execution count is cleared. The `d_x = None` stubs students start from sit
outside the solution regions, so they survive.

    python -m grader.release solutions/backprop_ninja.ipynb assignments/backprop_ninja.ipynb
"""

from __future__ import annotations

import copy
import sys

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUBS = {"code": "# YOUR CODE HERE", "markdown": "YOUR ANSWER HERE"}


def strip_solutions(source: str, stub: str) -> str:
    """Replace every solution region of `source` with `stub`, at the region's indentation."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + stub)
        elif line.strip() == END:
            if not inside:
                raise ValueError("### END SOLUTION without a BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without an END")
    return "\n".join(out)


def release(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return the released version of a solution notebook (the input is not modified)."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell.source = strip_solutions(cell.source, STUBS[cell.cell_type])
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def main(argv: list[str] | None = None) -> int:
    """`python -m grader.release SOLUTION OUT`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m grader.release SOLUTION.ipynb OUT.ipynb", file=sys.stderr)
        return 2
    nb = release(nbformat.read(args[0], as_version=4))
    nbformat.validate(nb)
    nbformat.write(nb, args[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
