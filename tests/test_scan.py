"""The static scan of answer cells, on source text alone."""

from __future__ import annotations

import nbformat
from conftest import SOLUTION

from grader import notebook
from grader.scan import scan

SOURCE = """%matplotlib inline
d_logits = logits.grad
loss.backward()
d_W1 = getattr(W1, "gr" + "ad")
d_b1 = getattr(b1, "grad")
from torch.autograd import grad as g2
with torch.enable_grad():
    x = torch.func.grad(f)(1)
torch._C._set_grad_enabled(True)
d_h = d_logits @ W2.T
exec("d_C = C.grad")
"""


def test_each_way_into_autograd_is_found_with_its_line_and_targets():
    found = [(f.line, f.status, f.targets) for f in scan(SOURCE)]
    assert (2, "autograd_used", ("d_logits",)) in found
    assert (3, "autograd_used", ()) in found
    assert (4, "suspicious", ("d_W1",)) in found
    assert (5, "autograd_used", ("d_b1",)) in found
    assert (6, "autograd_used", ()) in found
    assert (7, "autograd_used", ()) in found
    assert (8, "autograd_used", ("x",)) in found
    assert (9, "suspicious", ()) in found
    assert (11, "suspicious", ()) in found
    assert not [f for f in scan(SOURCE) if f.line in (1, 10)]


def test_the_solution_answers_raise_no_flag():
    nb = nbformat.read(SOLUTION, as_version=4)
    for cell in nb.cells:
        if notebook.is_solution(cell) or (cell.cell_type == "code" and not notebook.is_locked(cell)):
            assert scan(cell.source) == (), notebook.grade_id(cell)


def test_a_syntax_error_is_left_to_the_run():
    assert scan("d_h = = 1") == ()
