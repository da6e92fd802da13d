"""For authors: a new assignment that works before it is edited (`grader new NAME --course DIR`).

It writes, in the course folder (nbgrader's layout):

- `source/NAME/NAME.ipynb`: an nbgrader source notebook: a `parameters` cell (papermill's tag), a locked
  forward pass of a small layer (a linear map, `tanh`, a squared error), PyTorch's own backward pass for the
  self-checks, one answer cell with its `d_x = None` lines and a `### BEGIN SOLUTION` region, and its test
  cell worth one point per variable;
- `source/NAME/rubric.toml`: a short rubric of choices only (what the notebook says is read from it);
- `nbgrader_config.py`, where the course has none: the settings `grader release` uses, so that nbgrader's
  own `generate_assignment` in the course releases the same notebook (and never the author's mistakes/);
- `release/NAME/NAME.ipynb`, by `grader release`, so that `grader validate NAME` passes as written and the
  author edits from green.

Guarantees: an existing assignment is never overwritten; the name is checked before any path is made.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from grader import release
from grader.course import RUBRIC, in_course
from grader.errors import UsageError

PARAMETERS = """\
seed = 1234  # every random draw below comes from a generator seeded with it
batch_size = 8  # n: the examples of one batch
n_in = 5  # features of an example
n_out = 4  # units of the layer
"""

SETUP = """\
import os

os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")  # the grader's kernels, so that `exact` agrees
import torch

g = torch.Generator().manual_seed(seed)
x = torch.randn(batch_size, n_in, generator=g)
target = torch.randn(batch_size, n_out, generator=g)
W = (torch.randn(n_in, n_out, generator=g) * n_in**-0.5).requires_grad_()
b = (torch.randn(n_out, generator=g) * 0.1).requires_grad_()
"""

FORWARD = """\
# One small step per line, each with its own name: every one gets a gradient of its own.
h = x @ W + b  # (n, n_out)
a = torch.tanh(h)
diff = a - target
loss = (diff**2).mean()
"""

AUTOGRAD = """\
# PyTorch's own backward pass, only for the check cells (the grader never runs this cell).
for t in [h, a, diff]:
    t.retain_grad()
loss.backward()
"""

ANSWER = """\
# Exercise 1: the gradient of the loss with respect to every tensor of the forward pass, from the end.
d_diff = None
d_a = None
d_h = None
d_W = None
d_b = None
### BEGIN SOLUTION
d_diff = 2 * diff / diff.numel()
d_a = d_diff
d_h = (1 - a**2) * d_a
d_W = x.T @ d_h
d_b = d_h.sum(0)
### END SOLUTION
"""

INSTALL = (
    "The grader package is not installed in this kernel: run %pip install backprop-grader in a cell, then restart "
    "the kernel."
)
"""What every check cell says where the grader is missing (the shipped notebooks say the same)."""

CHECK = f"""\
try:
    from grader import check
except ModuleNotFoundError:  # not installed in this kernel: nothing is checked, no points
    print({INSTALL!r})
    check = lambda *args, **kwargs: 0  # noqa: E731 -- one line in a student's notebook, where a def would be noise

sum(int(check(name, grad, tensor)) for name, grad, tensor in [
    ("diff", d_diff, diff), ("a", d_a, a), ("h", d_h, h), ("W", d_W, W), ("b", d_b, b)
])  # one point per gradient that passes
"""

RUBRIC_TEXT = """\
# The rubric of {name}: only choices. What the notebook says is read from it: the answer cell of an
# exercise is the cell whose nbgrader grade_id is the exercise's id, its variables are the d_ names that
# cell assigns (d_x is the gradient of x), the loss is `loss`, its test cell is the one after it.
# Every key, with its default: the rubric reference (docs/rubric.md). Check it with `grader validate {name}`.

credit = "local"   # a gradient earns its points when its own step is right, even after an earlier mistake

[tolerance]        # |answer - autograd| <= atol + rtol * |autograd|, as torch.allclose
rtol = 1e-5
atol = 1e-7

[[hidden_run]]     # each answer must also be right here: a number copied from one run fails
seed = 20231
batch_size = 5
n_out = 3

[[exercise]]
id = "ex1"
"""


def _cell(
    kind: str, source: str, grade_id: str | None, *, solution: bool = False, points: int = 0
) -> nbformat.NotebookNode:
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source)
    if grade_id is not None:
        meta = {
            "grade": points > 0,
            "grade_id": grade_id,
            "locked": not solution,
            "schema_version": 3,
            "solution": solution,
        }
        if points:
            meta["points"] = points
        cell.metadata["nbgrader"] = meta
    return cell


def notebook(name: str) -> nbformat.NotebookNode:
    """The skeleton's solution notebook."""
    parameters = nbformat.v4.new_code_cell(PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        _cell("markdown", f"# {name}\n\nBackpropagate through a small layer by hand, one gradient per line.", "intro"),
        _cell(
            "markdown",
            "## Parameters\n\nThe grader may run the notebook again with other values here.",
            "parameters_md",
        ),
        parameters,
        _cell("code", SETUP, "setup"),
        _cell("code", FORWARD, "forward"),
        _cell("code", AUTOGRAD, "autograd"),
        _cell("markdown", "## Exercise 1\n\nReplace each `None` with the gradient of `loss`.", "ex1_md"),
        _cell("code", ANSWER, "ex1", solution=True),
        _cell("code", CHECK, "check_ex1", points=5),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["grader"] = {"assignment": name}
    return nb


def write(name: str, course: Path) -> list[Path]:
    """Write assignment `name`'s skeleton into the course folder `course`, release it; the paths written."""
    release.require_nbgrader()  # (before anything is written: the skeleton is released at once)
    source = course / "source" / name
    if source.exists():
        raise UsageError(f"{source} exists already: choose another name, or edit that one")
    source.mkdir(parents=True)
    solution = source / f"{name}.ipynb"
    nbformat.validate(notebook(name))
    nbformat.write(notebook(name), solution)
    (source / RUBRIC).write_text(RUBRIC_TEXT.format(name=name), encoding="utf-8")
    config = course / "nbgrader_config.py"
    written = [solution, source / RUBRIC]
    if not config.exists():  # (so that nbgrader's own generate_assignment releases it as grader release does)
        config.write_text(release.CONFIG, encoding="utf-8")
        written.append(config)
    location = in_course(course, name)
    assert location is not None  # (just made)
    return [*written, release.release(location)]
