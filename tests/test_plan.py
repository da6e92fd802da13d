"""Planning a run (no process started): locked cells, injected parameters, skipped cells, captures."""

from __future__ import annotations

import nbformat
from conftest import RELEASE
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader import assignment as assignments
from grader import notebook
from grader import plan as plans

RUBRIC = assignments.rubric_of("backprop_ninja")
ASSIGNMENT = assignments.load("backprop_ninja")
RELEASED = nbformat.read(RELEASE, as_version=4)
PARAMS = {"seed": 1, "data_path": "names.txt"}


def _student(edit=None, drop=()) -> nbformat.NotebookNode:
    nb = nbformat.read(RELEASE, as_version=4)
    nb.cells = [c for c in nb.cells if notebook.grade_id(c) not in drop]
    for c in nb.cells:
        if edit and notebook.grade_id(c) in edit:
            c.source = edit[notebook.grade_id(c)]
    return nb


def _labels(plan: plans.Plan) -> list[str]:
    return [c.label for c in plan.cells]


def test_untouched_release_runs_every_code_cell_but_the_skipped_ones():
    plan = plans.plan(_student(), ASSIGNMENT, PARAMS)
    labels = _labels(plan)
    assert labels[:3] == ["cell 3", "injected parameters", "cell 5 (setup)"]
    assert not any(skip in label for label in labels for skip in ("autograd", "check_ex"))
    assert plan.notes == ()
    assert plan.cells[1].source == "# Parameters injected by the grader\nseed = 1\ndata_path = 'names.txt'\n"
    assert [c.label for c in plan.cells if c.no_grad] == ["cell 9 (forward)"]


def test_captures_span_from_each_answer_cell_to_the_next():
    plan = plans.plan(_student(), ASSIGNMENT, PARAMS)
    labels = _labels(plan)
    by_ex = {c.exercise: c for c in plan.captures}
    assert labels[by_ex["ex1"].start] == "cell 13 (ex1)"
    assert labels[by_ex["ex1"].before] == "cell 17 (ex2)" == labels[by_ex["ex2"].start]
    assert labels[by_ex["ex3"].before] == "cell 25 (ex4)" == labels[by_ex["ex4"].start]
    assert by_ex["ex4"].before == len(plan.cells) and by_ex["ex4"].function == "backward"
    assert by_ex["ex4"].calls == (0, 24) and by_ex["ex4"].variables == ("loss",)
    assert len(by_ex["ex1"].variables) == 26


def test_edited_locked_cell_is_restored_and_noted():
    plan = plans.plan(_student(edit={"forward": "loss = 0"}), ASSIGNMENT, PARAMS)
    forward = next(c for c in plan.cells if c.label == "cell 9 (forward)")
    assert "bnvar = 1 / (n - 1)" in forward.source
    assert plan.notes == ("cell 9 (forward) is locked but was edited: the released version was run instead",)


def test_deleted_locked_cell_is_put_back_after_its_predecessor():
    plan = plans.plan(_student(drop={"init"}), ASSIGNMENT, PARAMS)
    labels = _labels(plan)
    assert labels[labels.index("cell 5 (setup)") + 1] == "released cell (init)"
    assert "locked cell init was missing: the released version was run in its place" in plan.notes


def test_without_a_parameters_cell_the_parameters_go_first():
    nb = new_notebook(cells=[new_markdown_cell("# mine"), new_code_cell("d_logits = None")])
    plan = plans.plan(nb, ASSIGNMENT, PARAMS)
    labels = _labels(plan)
    assert labels[0] == "injected parameters"
    # all locked code cells are restored, in release order, before the student's own cell
    assert labels[1:5] == [
        "released cell (setup)",
        "released cell (init)",
        "released cell (forward)",
        "released cell (ex2_forward)",
    ]
    assert plan.captures == ()
    assert "no answer cell ex1 found: ex1 earns no points" in plan.notes
    assert "no cell is tagged `parameters`: the grader's parameters were set before the setup cell" in plan.notes


def test_without_the_tag_the_parameters_still_win_over_an_untagged_parameters_cell():
    nb = _student()
    for c in nb.cells:
        c.metadata.pop("tags", None)
    plan = plans.plan(nb, ASSIGNMENT, PARAMS)
    labels = _labels(plan)
    assert labels[:3] == ["cell 3", "injected parameters", "cell 5 (setup)"]


def test_copies_of_locked_cells_do_not_run():
    nb = _student()
    forward = next(c for c in nb.cells if notebook.grade_id(c) == "forward")
    autograd = next(c for c in nb.cells if notebook.grade_id(c) == "autograd")
    copies = [nbformat.from_dict(dict(forward)), nbformat.from_dict(dict(autograd))]
    nb.cells[3:3] = copies  # before the originals, as an attacker who read the source would
    plan = plans.plan(nb, ASSIGNMENT, PARAMS)
    assert [c.label for c in plan.cells if c.label.endswith("(forward)")] == ["cell 4 (forward)"]
    assert plan.cells[[c.label for c in plan.cells].index("cell 4 (forward)")].no_grad
    assert not any("autograd" in c.label for c in plan.cells)
    assert "cell 11 (forward) repeats the locked cell forward: it was not run" in plan.notes


def test_metadata_of_the_wrong_type_is_ignored_not_a_crash():
    nb = _student()
    nb.metadata["grader"] = "backprop_ninja"
    nb.cells[0].metadata["nbgrader"] = ["x"]
    nb.cells[2].metadata["tags"] = "parameters"
    assert notebook.grade_id(nb.cells[0]) is None
    plan = plans.plan(nb, ASSIGNMENT, PARAMS)
    assert "injected parameters" in _labels(plan)
