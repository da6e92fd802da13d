"""Issue 8: the two further assignments, graded by the same machinery as backprop_ninja.

Submissions are made the way students make them: the released notebook, with the solution's answer
cells typed in (full marks), then one answer changed the way students get it wrong.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, answered, user_pytest

from grader import assignment as assignments
from grader import grade_notebook

NEW = ["activations_batchnorm", "leaky_abstractions", "wavenet"]
SIGN, TWICE, TRANSPOSED = "the sign is flipped", "times 2:", "transposed?"


def _submission(tmp_path: Path, name: str, edits: tuple[tuple[str, str, str], ...] = ()) -> Path:
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(answered(name, edits), path)
    return path


@pytest.mark.parametrize("name", NEW)
def test_the_solution_typed_into_the_release_earns_full_marks_with_hidden_runs(tmp_path, pool, name):
    report = grade_notebook(_submission(tmp_path, name), pool=pool)
    assert len(report.runs) == 3 and report.status == "graded"
    assert report.score == report.max_score, [v.message for v in report.variables if v.message]


@pytest.mark.parametrize("name", NEW)
def test_the_solution_itself_earns_full_marks(pool, name):
    report = grade_notebook(ROOT / "solutions" / f"{name}.ipynb", pool=pool)
    assert report.score == report.max_score and report.notes == ()


@pytest.mark.parametrize("name", NEW)
def test_the_untouched_release_earns_zero_without_errors(pool, name):
    report = grade_notebook(ROOT / "assignments" / f"{name}.ipynb", pool=pool)
    assert report.status == "graded" and report.score == 0
    assert {v.status for v in report.variables} == {"missing"}, {
        v.name: v.message for v in report.variables if v.status != "missing"
    }
    assert report.notes == ()


# (assignment, cell, line as in the solution, the mutated line, variable, status, what the message must say)
MISTAKES = [
    # activations_batchnorm, Exercise 1: a sign; a number right only for the published sizes
    (
        "activations_batchnorm",
        "ex1",
        "expected_init_loss = -math.log(1 / vocab_size)",
        "expected_init_loss = math.log(1 / vocab_size)",
        "expected_init_loss",
        "wrong",
        SIGN,
    ),
    (
        "activations_batchnorm",
        "ex1",
        "kaiming_std = (5 / 3) / fan_in**0.5",
        "kaiming_std = (5 / 3) / 30**0.5",
        "kaiming_std",
        "wrong",
        "right with the notebook's parameters but wrong in hidden run 1",
    ),
    (
        "activations_batchnorm",
        "ex1",
        "saturated_before = (h.abs() > 0.97).float().mean().item()",
        "saturated_before = (h.abs() > 0.97).float().sum().item()",
        "saturated_before",
        "wrong",
        "off by up to",
    ),
    # Exercise 2: the weight's gradient transposed (the first layer's is not square)
    (
        "activations_batchnorm",
        "layers",
        "self.d_weight = self.x.T @ d_out",
        "self.d_weight = (self.x.T @ d_out).T",
        "d_W0",
        "shape",
        TRANSPOSED,
    ),
    # ... BatchNorm's backward without Bessel's correction: the gain's gradient is still right
    ("activations_batchnorm", "layers", "- n / (n - 1) * self.xhat", "- self.xhat", "d_x0", "wrong", "off by up to"),
    (
        "activations_batchnorm",
        "layers",
        "self.d_beta = d_out.sum(0, keepdim=True)",
        "self.d_beta = 2 * d_out.sum(0, keepdim=True)",
        "d_beta3",
        "wrong",
        TWICE,
    ),
    # ... the running mean updated the wrong way round (the momentum is the new statistic's weight)
    (
        "activations_batchnorm",
        "layers",
        "self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean",
        "self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mean",
        "running_mean0",
        "wrong",
        "off by up to",
    ),
    # ... torch's own BatchNorm standing in for the student's
    (
        "activations_batchnorm",
        "layers",
        "self.out = self.gamma * self.xhat + self.beta",
        "self.out = F.batch_norm(x, None, None, self.gamma.view(-1), self.beta.view(-1), training=True)",
        "bn_out0",
        "suspicious",
        "PyTorch's own `batch_norm`",
    ),
    (
        "activations_batchnorm",
        "layers",
        "self.out = self.gamma * self.xhat + self.beta",
        "self.out = getattr(torch.nn, 'BatchNorm1d')(x.shape[1]).train()(x)",
        "bn_out0",
        "suspicious",
        "PyTorch's own `BatchNorm1d`",
    ),
    # Exercise 3: the update-to-data ratio without the log10
    (
        "activations_batchnorm",
        "diagnostics",
        "update_ratio = torch.stack([((lr * linear.d_weight).std() / linear.weight.std()).log10() for linear in linears])",
        "update_ratio = torch.stack([(lr * linear.d_weight).std() / linear.weight.std() for linear in linears])",
        "update_ratio",
        "wrong",
        "off by up to",
    ),
    # leaky_abstractions: the sigmoid's input gradient with the wrong sign; its local gradient
    (
        "leaky_abstractions",
        "sigmoid",
        "d_x_sig = d_a @ W_sig.T",
        "d_x_sig = -(d_a @ W_sig.T)",
        "d_x_sig",
        "wrong",
        SIGN,
    ),
    (
        "leaky_abstractions",
        "sigmoid",
        "local_grad = z_sig * (1 - z_sig)",
        "local_grad = z_sig * (1 + z_sig)",
        "local_grad",
        "wrong",
        "off by up to",
    ),
    (
        "leaky_abstractions",
        "relu",
        "d_b_relu = d_pre.sum(0)",
        "d_b_relu = 2 * d_pre.sum(0)",
        "d_b_relu",
        "wrong",
        TWICE,
    ),
    # ... "dead" read as "not firing for some example" instead of for all of them
    (
        "leaky_abstractions",
        "relu",
        "dead = (x_relu @ W_relu + b_new <= 0).all(0)",
        "dead = (x_relu @ W_relu + b_new <= 0).any(0)",
        "dead",
        "wrong",
        "off by up to",
    ),
    # ... and the review's cheats: numbers right only for the published scales, torch's BatchNorm by getattr
    (
        "leaky_abstractions",
        "rnn",
        "sigma_large = torch.linalg.svdvals(Whh_large)[0].item()",
        "sigma_large = 1.8",
        "sigma_large",
        "wrong",
        "right with the notebook's parameters but wrong in hidden run 1",
    ),
    (
        "leaky_abstractions",
        "rnn",
        "scale = min(1.0, max_norm / (total.item() + 1e-6))",
        "scale = max_norm / (total.item() + 1e-6)",
        "clipped_Whh",
        "wrong",
        "right with the notebook's parameters but wrong in hidden run 1",
    ),
    (
        "leaky_abstractions",
        "rnn",
        "h0_grad_norms_small = torch.stack",
        "d_h0_small = torch.zeros_like(d_h0_small)\nh0_grad_norms_small = torch.stack",
        "d_h0_small",
        "wrong",
        "all zeros",
    ),
    # ... BPTT that forgets to accumulate the recurrent weight's gradient over the steps
    (
        "leaky_abstractions",
        "rnn",
        "        d_Whh += hs[t - 1].T @ d_a",
        "        d_Whh = hs[t - 1].T @ d_a",
        "d_Whh_large",
        "wrong",
        "off by up to",
    ),
    # ... clipping each gradient on its own instead of by the global norm; torch's own clipping
    (
        "leaky_abstractions",
        "rnn",
        "clipped_Whh, clipped_Wxh, clipped_bh = d_Whh_large * scale, d_Wxh_large * scale, d_bh_large * scale",
        "clipped_Whh, clipped_Wxh, clipped_bh = (t * min(1.0, max_norm / t.norm().item()) for t in "
        "(d_Whh_large, d_Wxh_large, d_bh_large))",
        "clipped_Wxh",
        "wrong",
        "off by up to",
    ),
    (
        "leaky_abstractions",
        "rnn",
        "clipped_Whh, clipped_Wxh, clipped_bh = d_Whh_large * scale, d_Wxh_large * scale, d_bh_large * scale",
        "clipped_Whh, clipped_Wxh, clipped_bh = [t.clone() for t in (d_Whh_large, d_Wxh_large, d_bh_large)]\n"
        "torch.nn.utils.clip_grad_norm_([clipped_Whh, clipped_Wxh, clipped_bh], max_norm)",
        "clipped_Whh",
        "suspicious",
        "PyTorch's own `clip_grad_norm_`",
    ),
    # ... the clamped loss's gradient given the Huber behaviour it was meant to have
    (
        "leaky_abstractions",
        "huber",
        "d_delta_clamp = torch.where(delta_clamp.abs() <= 1, delta_clamp, torch.zeros_like(delta_clamp))",
        "d_delta_clamp = delta_clamp.clamp(-1, 1)",
        "d_delta_clamp",
        "wrong",
        "off by up to",
    ),
    # wavenet (written with grader new, release and validate): the (B, T, C) batch normalisation's parameters
    # summed over the batch only, the time steps forgotten
    (
        "wavenet",
        "ex1",
        "d_bnbias1 = d_h1bn.sum((0, 1))",
        "d_bnbias1 = d_h1bn.sum(0)",
        "d_bnbias1",
        "shape",
        "the sum over dimension 0 (size 2) is missing",
    ),
    # ... its mean's gradient spread over n rows, not the n * 2 it was taken over
    (
        "wavenet",
        "ex1",
        "d_h1pre = d_bn1diff + d_bn1mean / (n * 2)",
        "d_h1pre = d_bn1diff + d_bn1mean / n",
        "d_h1pre",
        "wrong",
        "off by up to",
    ),
    # ... Bessel's correction left out of the second normalisation
    (
        "wavenet",
        "ex1",
        "d_bn2diff2 = torch.ones_like(bn2diff2) / (n - 1) * d_bn2var",
        "d_bn2diff2 = torch.ones_like(bn2diff2) / n * d_bn2var",
        "d_bn2diff2",
        "wrong",
        "times (n-1)/n (= 31/32)",
    ),
    # ... the first layer's weight transposed, and repeated characters overwritten instead of added up
    (
        "wavenet",
        "ex1",
        "d_W1 = (x1.transpose(1, 2) @ d_h1pre).sum(0)",
        "d_W1 = (d_h1pre.transpose(1, 2) @ x1).sum(0)",
        "d_W1",
        "shape",
        TRANSPOSED,
    ),
    (
        "wavenet",
        "ex1",
        "d_C.index_add_(0, Xb.view(-1), d_emb.view(-1, n_embd))",
        "d_C[Xb.view(-1)] = d_emb.view(-1, n_embd)",
        "d_C",
        "wrong",
        "off by up to",
    ),
]


# The behaviour notebooks these make, one per mistake, named for what they show (tests/notebooks/<assignment>/).
NAMES = [
    "init_loss_sign",
    "kaiming_literal_fan_in",
    "saturation_count",
    "d_weight_transposed",
    "bn_backward_no_bessel",
    "d_beta_doubled",
    "running_mean_momentum_swapped",
    "torch_batch_norm",
    "torch_batch_norm_by_getattr",
    "update_ratio_no_log10",
    "sigmoid_d_x_sign",
    "sigmoid_local_grad",
    "relu_d_b_doubled",
    "dead_any_not_all",
    "sigma_literal",
    "clipping_always_rescales",
    "d_h0_small_zeros",
    "bptt_no_accumulation",
    "clipping_each_alone",
    "torch_clip_grad_norm",
    "clamp_gradient_as_huber",
    "bnbias1_time_steps_not_summed",
    "bn1_mean_spread_over_n",
    "bn2_no_bessel",
    "W1_transposed",
    "C_rows_overwritten",
]
assert len(NAMES) == len(MISTAKES) == len(set(NAMES))


def behaviour_notebook(name: str) -> Path:
    return ROOT / "tests" / "notebooks" / MISTAKES[NAMES.index(name)][0] / f"{name}.ipynb"


def write_behaviour_notebooks() -> None:
    """(Re)write the behaviour notebooks from the table: `python tests/test_assignments.py`."""
    for name, (assignment, cell, old, new, *_) in zip(NAMES, MISTAKES):
        path = behaviour_notebook(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(answered(assignment, ((cell, old, new),)), path)


def test_behaviour_notebooks_are_the_release_with_one_mistake_each():
    """The committed notebooks are what the table makes of the current release and solution."""
    stale = [
        name
        for name, (assignment, cell, old, new, *_) in zip(NAMES, MISTAKES)
        if nbformat.read(behaviour_notebook(name), as_version=4) != answered(assignment, ((cell, old, new),))
    ]
    assert stale == [], "run `python tests/test_assignments.py` after editing a solution or the table"


@pytest.mark.parametrize(
    "file, name, cell, old, new, variable, status, phrase", [(n, *m) for n, m in zip(NAMES, MISTAKES)], ids=NAMES
)
def test_one_wrong_answer_gets_its_verdict_and_hint(pool, file, name, cell, old, new, variable, status, phrase):
    report = grade_notebook(behaviour_notebook(file), pool=pool)
    verdict = next(v for v in report.variables if v.name == variable)
    assert verdict.points == 0 and verdict.status == status, verdict
    assert phrase in verdict.message, verdict.message
    # the mistake costs points in its own answer cell's exercises only (the layers also feed the diagnostics)
    cells = {ex.id: ex.cell for ex in assignments.rubric_of(name).exercises}
    lost = {cells[v.exercise] for v in report.variables if v.points < v.max_points}
    assert lost == {cell} or (cell, lost) == ("layers", {"layers", "diagnostics"}), lost


def test_every_exercise_of_the_new_assignments_has_a_mistake_above():
    for name in NEW:
        r = assignments.rubric_of(name)
        cells = {c for n, c, *_ in MISTAKES if n == name}
        assert cells == {ex.cell for ex in r.exercises}, (name, cells)


def test_torch_standing_in_from_a_cell_of_ones_own_is_caught(tmp_path, pool):
    """A cell added after the locked network that redoes the BatchNorm buffers with torch's own module."""
    nb = answered(
        "activations_batchnorm",
        (("layers", "self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean", "pass"),),
    )
    at = next(
        i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "network"
    )
    nb.cells.insert(
        at + 1,
        nbformat.v4.new_code_cell(
            "bn = torch.nn.BatchNorm1d(n_hidden)\nbn(inputs @ weights[0])\nrunning_mean0 = bn.running_mean.view(1, -1)"
        ),
    )
    path = tmp_path / "added.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, pool=pool)
    verdict = next(v for v in report.variables if v.name == "running_mean0")
    assert verdict.status == "suspicious" and "PyTorch's own `BatchNorm1d`" in verdict.message


def test_numbers_may_be_python_numpy_or_tensor_scalars(tmp_path, pool):
    nb = answered(
        "activations_batchnorm",
        (
            (
                "ex1",
                "kaiming_std = (5 / 3) / fan_in**0.5",
                "import numpy as np\nkaiming_std = np.float64((5 / 3) / fan_in**0.5)",
            ),
            (
                "ex1",
                "expected_init_loss = -math.log(1 / vocab_size)",
                "expected_init_loss = -torch.tensor(1 / vocab_size).log()",
            ),
        ),
    )
    path = tmp_path / "numbers.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, pool=pool)
    assert {v.name: v.points for v in report.variables if v.exercise == "ex1"} == dict.fromkeys(
        ["expected_init_loss", "loss_before", "loss_after", "saturated_before", "saturated_after", "kaiming_std"], 1.0
    )


if __name__ == "__main__":
    write_behaviour_notebooks()


@pytest.mark.slow
def test_wavenet_grades_through_grade_gradescope_and_the_pytest_plugin(tmp_path):
    """The fourth assignment, written with the authoring commands, goes through every integration as the others."""
    import json
    import subprocess

    from conftest import grader_command
    from test_gradescope import _submit

    from grader.integrations import gradescope

    full = answered("wavenet")
    slip = answered("wavenet", (MISTAKES[NAMES.index("bn2_no_bessel")][1:4],))
    for student, nb in (("ada", full), ("ben", slip)):
        (tmp_path / "class" / student / "wavenet").mkdir(parents=True)
        nbformat.write(nb, tmp_path / "class" / student / "wavenet" / "wavenet.ipynb")
    proc = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(tmp_path / "class"),
            "--assignment",
            "wavenet",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "out" / "grades.csv").read_text(encoding="utf-8").splitlines()
    assert any(r.startswith("ada,graded,31,31") for r in rows) and any(r.startswith("ben,graded,30,31") for r in rows)

    proc = user_pytest(tmp_path, "-q", "--grade", str(tmp_path / "class" / "ben" / "wavenet" / "wavenet.ipynb"))
    assert "1 failed, 32 passed" in proc.stdout, proc.stdout[-2000:]

    root = tmp_path / "autograder"
    root.mkdir()
    proc = subprocess.run(
        [*grader_command(), "gradescope", "build", "wavenet", "--out", str(root / "autograder.zip")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    gradescope.unpack(root / "autograder.zip", root / "source")
    import shutil

    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    results = _submit(root, tmp_path / "class" / "ada" / "wavenet" / "wavenet.ipynb")
    assert results["score"] == 31 and json.dumps(results)
