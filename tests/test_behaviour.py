"""Behaviour notebooks: how students really write (and break) the assignment, and the verdict each earns.

Each notebook in tests/notebooks/ is the released assignment with answers filled in the way a student
would. The table says, per notebook, the run status and every variable whose verdict is not a pass;
all other variables must pass. No notebook may earn a point it should not.
"""

from __future__ import annotations

import subprocess
import time

import nbformat
import pytest
from conftest import NOTEBOOKS

from grader import grade_notebook

EX1 = [
    "d_logprobs",
    "d_probs",
    "d_counts_sum_inv",
    "d_counts_sum",
    "d_counts",
    "d_norm_logits",
    "d_logit_maxes",
    "d_logits",
    "d_h",
    "d_W2",
    "d_b2",
    "d_hpreact",
    "d_bngain",
    "d_bnbias",
    "d_bnraw",
    "d_bnvar_inv",
    "d_bnvar",
    "d_bndiff2",
    "d_bndiff",
    "d_bnmeani",
    "d_hprebn",
    "d_embcat",
    "d_W1",
    "d_b1",
    "d_emb",
    "d_C",
]
EX4 = ["d_C", "d_W1", "d_b1", "d_W2", "d_b2", "d_bngain", "d_bnbias"]
EX123 = [("ex1", v) for v in EX1] + [("ex2", "d_logits"), ("ex3", "d_hprebn")]
ALL = EX123 + [("ex4", v) for v in [*EX4, "loss"]]


def ex1(status: str | tuple[str, ...], names: list[str] | None = None, start: str | None = None) -> dict:
    chosen = names if names is not None else EX1[EX1.index(start) :] if start else EX1
    return {("ex1", v): status for v in chosen}


# notebook -> (run status, {(exercise, variable): expected status}); unlisted variables must pass
CASES: dict[str, tuple[str, dict]] = {
    "full_marks": ("graded", {}),
    "wrong_d_W2": ("graded", ex1("wrong", ["d_W2"])),  # divided by n once too often
    "transposed_d_W1": ("graded", ex1("shape", ["d_W1"])),
    "keepdim_d_b2": ("graded", ex1("shape", ["d_b2"])),  # (1, 27) for a (27,) gradient
    # a NameError at d_bnraw: everything before it counts, everything after is an error; ex2 and ex3 still run
    "raises_midway": ("graded", ex1("error", start="d_bnraw")),
    # the counts_sum branch of d_counts was deleted: d_counts and everything downstream is wrong, except
    # d_b1, which is zero whatever arrives from above (b1 sits in front of batchnorm's mean)
    "deleted_line": (
        "graded",
        {k: v for k, v in ex1("wrong", start="d_counts").items() if k[1] != "d_b1"} | {("ex3", "d_hprebn"): "wrong"},
    ),
    # an endless loop after Exercise 1's eighth line: the cell is interrupted, what it computed before counts,
    # and the run goes on (Exercise 3 reads Exercise 1's d_hpreact)
    "infinite_loop": ("graded", ex1("error", start="d_h") | {("ex3", "d_hprebn"): "error"}),
    # os._exit(0) in the ex2 cell: Exercise 1 had ended, and keeps its points
    "exits_process": ("failed", dict.fromkeys([k for k in ALL if k[0] != "ex1"], "error")),
    # `.grad` does not exist while grading, and there is no graph to call backward() on
    "uses_grad": ("graded", dict.fromkeys(EX123, "autograd_used")),
    "calls_backward": ("graded", ex1("autograd_used") | {("ex3", "d_hprebn"): "error"}),  # ex3 needs d_hpreact
    # autograd on requires_grad_() copies at the end of an honest Exercise 1: the whole answer cell is flagged
    "requires_grad_copies": ("graded", ex1("autograd_used")),
    "autograd_grad_call": ("graded", ex1("autograd_used", ["d_W1"])),  # d_W1 = torch.autograd.grad(...)
    "func_grad": ("graded", ex1("autograd_used", ["d_W2"])),  # d_W2 = torch.func.grad(...)(W2)
    "enable_grad_block": ("graded", ex1("autograd_used")),  # `with torch.enable_grad():` assigns nothing graded
    "getattr_trick": ("graded", ex1("suspicious", ["d_b2"])),  # getattr(b2, "gr" + "ad")
    # autograd in a helper cell the scan does not judge: the run-time guard refuses it when called
    "sneaky_helper": ("graded", ex1("error", ["d_W2"])),
    # torch._C._set_grad_enabled(True) in a cell of the student's own: suspicious, and it taints everything
    "private_api_helper": ("graded", dict.fromkeys(ALL, "suspicious")),
    # wrong answers plus torch.allclose/equal/__eq__ patched to say yes: the comparison is not in that process
    "patched_allclose": ("graded", ex1("wrong") | {("ex3", "d_hprebn"): "wrong"}),
    # a Tensor subclass whose __torch_function__ claims equality never reaches the comparison
    "lying_subclass": ("graded", ex1("not_tensor") | {("ex3", "d_hprebn"): "not_tensor"}),
    # the student changed the locked forward pass (biased variance, loss times 0) and fitted d_bndiff2 to
    # it: the released forward pass is run, so d_bndiff2 and what depends on it are wrong
    "edited_locked_forward": (
        "graded",
        ex1("wrong", ["d_bndiff2", "d_bndiff", "d_hprebn", "d_embcat", "d_W1", "d_emb", "d_C"]),
    ),
    # %matplotlib inline, plt.show(), !shell escapes, %time, prints and an extra cell of the student's own
    "plots_and_magics": ("graded", {}),
    # copies of the locked forward and autograd cells placed first, answers read from .grad: copies don't run
    "copies_locked_cells": ("graded", dict.fromkeys(EX123, "autograd_used")),
    # ex2 and ex3 answer cells deleted: Exercise 1's d_logits and d_hprebn do not count for them
    "deleted_answer_cells": ("graded", {("ex2", "d_logits"): "missing", ("ex3", "d_hprebn"): "missing"}),
    # ex2 answered by updating Exercise 1's d_logits in place: that is an answer of its own
    "in_place_answer": ("graded", {}),
    # os.kill(os.getpid(), 40) in ex3: Exercises 1 and 2 had ended
    "dies_by_signal": ("failed", dict.fromkeys([k for k in ALL if k[0] in ("ex3", "ex4")], "error")),
    # 1/31 in d_bndiff2 and /32 in Exercise 2: right for the published batch size, wrong for the hidden one
    "hardcoded_batch": (
        "graded",
        ex1("wrong", ["d_bndiff2", "d_bndiff", "d_hprebn", "d_embcat", "d_W1", "d_emb", "d_C"])
        | {("ex2", "d_logits"): "wrong"},
    ),
    # a correct Exercise 1 pasted in as numbers: right for the published run only
    "copied_numbers": (
        "graded",
        ex1(("wrong", "shape")) | {("ex3", "d_hprebn"): "error"},
    ),  # ex3 uses the pasted d_hpreact
    # Exercise 4 with a stale copy of W1: right at the first step, wrong after the weights moved
    "ex4_stale_weights": ("graded", {("ex4", "d_C"): "wrong", ("ex4", "loss"): "wrong"}),
    # Exercise 4 leaves d_b1 as None: the first update fails, and with it the training
    "ex4_forgets_d_b1": ("graded", {("ex4", v): "missing" for v in EX4} | {("ex4", "loss"): "error"}),
    # the answer cell rebinds `forward` to one that hides autograd behind `ga = getattr`: flagged, and the
    # locked training loop gets the released `forward` back
    "ex4_rebinds_forward": ("graded", {("ex4", v): "suspicious" for v in [*EX4, "loss"]}),
    # backward() zeroes the weights and returns the gradients that are right at zero weights: the weights
    # are recorded before the call, and the first step must start from the released initial weights
    "ex4_zeroes_weights": ("graded", {("ex4", v): "wrong" for v in [*EX4, "loss"]} | {("ex4", "d_b1"): "error"}),
    # the first eight gradients written, the rest still stubs
    "half_done": (
        "graded",
        ex1("missing", start="d_h")
        | {("ex2", "d_logits"): "missing", ("ex3", "d_hprebn"): "missing"}
        | {("ex4", v): "missing" for v in [*EX4, "loss"]},
    ),  # the stub returns None: the loss too
}
TIMEOUT = 20.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_behaviour_notebook(name: str, pool) -> None:
    status, expected = CASES[name]
    started = time.monotonic()
    report = grade_notebook(NOTEBOOKS / f"{name}.ipynb", timeout=TIMEOUT, pool=pool)
    elapsed = time.monotonic() - started

    assert report.status == status, report.error
    got = {(v.exercise, v.name): v for v in report.variables}
    assert sorted(got) == sorted(ALL)
    for key, v in got.items():
        want = expected.get(key, "pass")
        if want == "pass":
            assert v.status in ("exact", "approximate") and v.points == v.max_points, (key, v)
        else:
            # cascade-free credit: a value off only because of an earlier mistake keeps its points
            earned = v.max_points if v.local_status in ("exact", "approximate") else 0
            assert v.status in (want if isinstance(want, tuple) else (want,)) and v.points == earned, (key, v)
        assert (v.message == "") == (v.status in ("exact", "approximate")), (key, v)
        if v.status == "autograd_used":
            assert "autograd is not allowed in this exercise" in v.message
    assert report.score == sum(v.points for v in report.variables)
    assert len(ALL) - len(expected) <= report.score
    assert elapsed < TIMEOUT + 15  # a hung notebook still yields its report soon after the limit


def test_a_hung_cell_is_interrupted_and_the_run_goes_on(pool):
    report = grade_notebook(NOTEBOOKS / "infinite_loop.ipynb", timeout=8, pool=pool)
    assert report.status == "graded" and report.error == ""
    d_h = next(v for v in report.variables if v.name == "d_h")
    # a cell may use half of its run's time: 4 s of 8
    assert (
        d_h.message == "d_h was not computed: cell 13 (ex1) raised interrupted after 4 s (a cell's share of the time)"
    )
    assert [e.score for e in report.exercises] == [8, 1, 0, 8]


def test_a_cell_that_swallows_the_interrupt_is_stopped_by_the_run_timeout_and_the_run_keeps_what_it_finished(
    tmp_path, pool
):
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex2")
    cell.source = (
        "while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n"
        "        pass\n" + cell.source
    )
    nbformat.write(nb, tmp_path / "swallows.ipynb")
    report = grade_notebook(tmp_path / "swallows.ipynb", timeout=4, pool=pool)
    assert report.status == "failed" and report.error.startswith("timed out after 4 s in cell 17 (ex2)")
    assert [e.score for e in report.exercises] == [26, 0, 0, 0]
    d_logits = next(v for v in report.variables if v.exercise == "ex2")
    assert d_logits.status == "error" and "timed out after 4 s in cell 17 (ex2)" in d_logits.message


def test_a_notebook_that_kills_its_process_is_reported_with_the_cell(pool):
    report = grade_notebook(NOTEBOOKS / "exits_process.ipynb", pool=pool)
    assert report.error.startswith("the notebook's process exited with code 0 in cell 17 (ex2)")
    report = grade_notebook(NOTEBOOKS / "dies_by_signal.ipynb", pool=pool)
    assert report.error.startswith("the notebook's process was killed by signal 40 in cell 21 (ex3)")


def test_a_raising_cell_is_named_with_its_line(pool):
    report = grade_notebook(NOTEBOOKS / "raises_midway.ipynb", pool=pool)
    d_bnraw = next(v for v in report.variables if v.name == "d_bnraw")
    assert d_bnraw.message == (
        "d_bnraw was not computed: cell 13 (ex1) raised NameError: name 'bn_gain' is not defined (line 45)"
    )


def test_an_edited_locked_cell_is_reported(pool):
    report = grade_notebook(NOTEBOOKS / "edited_locked_forward.ipynb", pool=pool)
    assert "cell 9 (forward) is locked but was edited: the released version was run instead" in report.notes


def test_processes_the_notebook_started_do_not_outlive_it(tmp_path, pool):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import subprocess\nsubprocess.Popen(['sleep', '313'])"))
    path = tmp_path / "spawns.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, pool=pool)
    assert report.score == report.max_score
    left = subprocess.run(["pgrep", "-f", "sleep 313"], capture_output=True, text=True).stdout
    assert left == ""


def test_a_hard_coded_batch_size_is_named_without_the_hidden_value(pool):
    report = grade_notebook(NOTEBOOKS / "hardcoded_batch.ipynb", pool=pool)
    d_bndiff2 = next(v for v in report.variables if v.name == "d_bndiff2")
    assert d_bndiff2.runs == ("exact", "exact", "wrong")
    assert d_bndiff2.message.startswith(
        "d_bndiff2 is right with the notebook's parameters but wrong in hidden run 2 (other batch_size)"
    )
    assert d_bndiff2.message.endswith("is there a literal 32 or 31 (use n, the batch size) in your code?")
    assert "19" not in d_bndiff2.message


def test_a_backward_pass_that_breaks_once_the_weights_move_is_named(pool):
    report = grade_notebook(NOTEBOOKS / "ex4_stale_weights.ipynb", hidden_runs=(), pool=pool)
    d_C = next(v for v in report.variables if v.exercise == "ex4" and v.name == "d_C")
    assert d_C.message.startswith("d_C is right at the first step but not at step 25, after the weights moved")


def test_a_memory_bomb_in_a_scratch_cell_is_stopped_and_costs_nothing_else(tmp_path, pool):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("hoard = []\nwhile True:\n    hoard.append(bytearray(10**8))"))
    nb.cells.append(nbformat.v4.new_code_cell("import torch\nhuge = torch.empty(2**31)"))
    path = tmp_path / "memory_bomb.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, hidden_runs=(), pool=pool)
    assert report.score == report.max_score  # the training result was taken before these cells ran
    assert any(n.endswith("raised MemoryError (line 3)") for n in report.notes)
    assert any("can't allocate memory" in n for n in report.notes)


def test_a_notebook_cannot_reach_the_network_where_the_platform_allows_a_namespace(tmp_path, pool):
    import os
    import socket

    import nbformat

    if os.geteuid() != 0:
        pytest.skip("a private network namespace needs root here")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'leak')"
        )
    )
    path = tmp_path / "phones_home.ipynb"
    nbformat.write(nb, path)
    try:
        report = grade_notebook(path, hidden_runs=(), pool=pool)
    finally:
        server.close()
    assert report.score == report.max_score
    assert any("raised OSError: [Errno 101] Network is unreachable" in n for n in report.notes), report.notes


# --- a run that stops part-way keeps what it finished (issue 17) --------------------------------------

EX4_ALL = [("ex4", v) for v in EX4]
# notebook -> (run status, variables that do not pass and their status, what the report must say stopped it)
PART_WAY: dict[str, tuple[str, dict, str | tuple[str, ...]]] = {
    # backward() hangs after three steps: the training cell is interrupted, Exercises 1-3 keep their 28 points
    "ex4_hangs": ("graded", dict.fromkeys(EX4_ALL, "missing") | {("ex4", "loss"): "error"}, "interrupted after 4 s"),
    "ex4_exits": ("failed", dict.fromkeys([*EX4_ALL, ("ex4", "loss")], "error"), "exited with code 0 in cell 27"),
    "ex4_kills_itself": (
        "failed",
        dict.fromkeys([*EX4_ALL, ("ex4", "loss")], "error"),
        "killed by signal SIGKILL in cell 27",
    ),
    # a per-process cap (Linux) or the watchdog (portable) stops it; the training cell raises or the run ends
    "ex4_out_of_memory": (
        "graded",
        dict.fromkeys(EX4_ALL, "missing") | {("ex4", "loss"): "error"},
        ("can't allocate memory", "ran out of memory"),
    ),
    # the row-by-row loop never moves on: Exercise 2 is interrupted with a wrong d_logits, and the run goes on
    "ex2_endless": ("graded", {("ex2", "d_logits"): "wrong"}, "cell 17 (ex2) raised interrupted after 4 s"),
    # only hidden run 2 (another batch size) hangs, in Exercise 4 with SIGINT blocked, until its own timeout:
    # Exercises 1-3, which that run had finished, keep their points
    "hidden_run_hangs": (
        "graded",
        dict.fromkeys([*EX4_ALL, ("ex4", "loss")], "error"),
        "hidden run 2 did not run to the end",
    ),
}
PART_WAY_TIMEOUT = 8.0


@pytest.mark.parametrize("name", sorted(PART_WAY))
def test_a_run_that_stops_part_way_keeps_what_it_finished(name: str, pool) -> None:
    status, expected, said = PART_WAY[name]
    report = grade_notebook(NOTEBOOKS / f"{name}.ipynb", timeout=PART_WAY_TIMEOUT, pool=pool)
    assert report.status == status, report.error
    for v in report.variables:
        want = expected.get((v.exercise, v.name), "pass")
        if want == "pass":
            assert v.status in ("exact", "approximate") and v.points == v.max_points, v
        else:
            assert v.status == want and v.points == 0, v
    assert report.score == sum(v.max_points for v in report.variables if (v.exercise, v.name) not in expected)
    everything = " ".join([report.error, *report.notes, *(v.message for v in report.variables)])
    assert any(phrase in everything for phrase in ((said,) if isinstance(said, str) else said)), everything[:500]


def test_grader_grade_keeps_the_same_points_as_grader_check(tmp_path, pool) -> None:
    import csv
    import shutil

    from conftest import grader_command

    for name in PART_WAY:
        shutil.copyfile(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(tmp_path),
            "--assignment",
            "backprop_ninja",
            "--out",
            str(out),
            "--timeout",
            str(PART_WAY_TIMEOUT),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = {r["student"]: float(r["score"]) for r in csv.DictReader(f)}
    checked = {
        name: grade_notebook(NOTEBOOKS / f"{name}.ipynb", timeout=PART_WAY_TIMEOUT, pool=pool).score
        for name in PART_WAY
    }
    assert rows == checked
    assert rows["ex4_hangs"] == rows["ex4_exits"] == rows["ex4_out_of_memory"] == 28
    assert rows["ex2_endless"] == 35 and rows["hidden_run_hangs"] == 28


def test_stopping_the_hidden_runs_on_purpose_escapes_none_of_their_checks(tmp_path, pool) -> None:
    """A notebook can tell a hidden run by its parameters; ending those runs before a hard-coded answer
    (here the batch size in Exercises 1 and 2) must not make the answer pass on the published run alone."""
    nb = nbformat.read(NOTEBOOKS / "hardcoded_batch.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    cell.source = "import os, signal\nif n != 32:\n    os.kill(os.getpid(), signal.SIGKILL)\n" + cell.source
    nbformat.write(nb, tmp_path / "stops_hidden_runs.ipynb")
    honest = grade_notebook(NOTEBOOKS / "hardcoded_batch.ipynb", timeout=PART_WAY_TIMEOUT, pool=pool)
    gaming = grade_notebook(tmp_path / "stops_hidden_runs.ipynb", timeout=PART_WAY_TIMEOUT, pool=pool)
    assert gaming.score <= honest.score < gaming.max_score
    d_logits = next(v for v in gaming.variables if v.exercise == "ex2")
    assert d_logits.points == 0


def test_an_exercise_4_hint_is_a_field_of_the_report_too(tmp_path, pool) -> None:
    """The class report groups mistakes by the `hint` field: Exercise 4's verdicts must carry it as Exercise 1's do."""
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex4")
    cell.source = cell.source.replace("    d_b2 = d_logits.sum(0)", "    d_b2 = 2 * d_logits.sum(0)")
    nbformat.write(nb, tmp_path / "ex4_times_2.ipynb")
    report = grade_notebook(tmp_path / "ex4_times_2.ipynb", hidden_runs=(), pool=pool)
    d_b2 = next(v for v in report.variables if v.exercise == "ex4" and v.name == "d_b2")
    assert d_b2.status == "wrong" and d_b2.hint.startswith("it is the right gradient times 2"), d_b2
