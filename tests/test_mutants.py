"""Mutation tests of the hints: the solution with one typical mistake, and the sentence it must get.

Each mutant edits one line of an answer cell of the full-marks notebook the way students get it
wrong; the hint of the variable that line computes must name the mistake. No hint would be a miss;
a hint naming another mistake would be wrong, and fails the test at once.
"""

from __future__ import annotations

import nbformat
import pytest
from conftest import NOTEBOOKS

from grader import assignment as assignments
from grader import grade_notebook

SIGN, BRANCH, ZEROS, TARGETS = (
    "the sign is flipped",
    "only the gradient flowing back from",
    "all zeros",
    "target entries",
)
N, OVER_N, TWICE, HALF = "times n (= 32)", "times 1/n (= 1/32)", "times 2:", "times 1/2:"
TRANSPOSED, KEEPDIM, NO_KEEPDIM, AXIS = "transposed?", "summed with keepdim=True", "keep the dimension", "wrong axis"

# (cell, line as in the solution, the mutated line, the variable it breaks, what its hint must say)
MUTANTS = [
    # the sign
    ("ex1", "d_probs = (1.0 / probs) * d_logprobs", "d_probs = -(1.0 / probs) * d_logprobs", "d_probs", SIGN),
    ("ex1", "d_norm_logits = counts * d_counts", "d_norm_logits = -counts * d_counts", "d_norm_logits", SIGN),
    ("ex1", "d_h = d_logits @ W2.T", "d_h = -(d_logits @ W2.T)", "d_h", SIGN),
    ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = -(h.T @ d_logits)", "d_W2", SIGN),
    ("ex1", "d_bnraw = bngain * d_hpreact", "d_bnraw = -bngain * d_hpreact", "d_bnraw", SIGN),
    ("ex1", "d_embcat = d_hprebn @ W1.T", "d_embcat = -(d_hprebn @ W1.T)", "d_embcat", SIGN),
    ("ex2", "d_logits /= n", "d_logits /= -n", "d_logits", SIGN),
    # a factor of n
    ("ex1", "d_logprobs[range(n), Yb] = -1.0 / n", "d_logprobs[range(n), Yb] = -1.0", "d_logprobs", N),
    ("ex1", "d_W1 = embcat.T @ d_hprebn", "d_W1 = embcat.T @ d_hprebn * n", "d_W1", N),
    ("ex2", "d_logits /= n", "pass", "d_logits", N),
    ("ex3", "bngain * bnvar_inv / n *", "bngain * bnvar_inv *", "d_hprebn", N),
    # ... or of 1/n: `d_logits /= n` twice, say
    ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits / n", "d_W2", OVER_N),
    ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = d_logits.sum(0) / n", "d_b2", OVER_N),
    (
        "ex1",
        "d_bnvar_inv = (bndiff * d_bnraw).sum(0, keepdim=True)",
        "d_bnvar_inv = (bndiff * d_bnraw).sum(0, keepdim=True) / n",
        "d_bnvar_inv",
        OVER_N,
    ),
    ("ex2", "d_logits /= n", "d_logits /= n\nd_logits /= n", "d_logits", OVER_N),
    # a factor of 2 or 1/2
    ("ex1", "d_bnvar = (-0.5 *", "d_bnvar = (-1.0 *", "d_bnvar", TWICE),
    ("ex1", "d_hpreact = (1.0 - h**2) * d_h", "d_hpreact = 2 * (1.0 - h**2) * d_h", "d_hpreact", TWICE),
    (
        "ex1",
        "d_counts_sum_inv = (counts * d_probs).sum(1, keepdim=True)",
        "d_counts_sum_inv = 2 * (counts * d_probs).sum(1, keepdim=True)",
        "d_counts_sum_inv",
        TWICE,
    ),
    (
        "ex1",
        "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bngain = 0.5 * (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bngain",
        HALF,
    ),
    ("ex1", "d_emb = d_embcat.view(emb.shape)", "d_emb = d_embcat.view(emb.shape) / 2", "d_emb", HALF),
    # Bessel's correction the wrong way round
    ("ex1", "d_bndiff2 = (1.0 / (n - 1))", "d_bndiff2 = (1.0 / n)", "d_bndiff2", "times (n-1)/n (= 31/32)"),
    # transposed
    ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = d_logits.T @ h", "d_W2", TRANSPOSED),
    ("ex1", "d_W1 = embcat.T @ d_hprebn", "d_W1 = d_hprebn.T @ embcat", "d_W1", TRANSPOSED),
    # keepdim where there is none, none where there is one
    ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = d_logits.sum(0, keepdim=True)", "d_b2", KEEPDIM),
    ("ex1", "d_b1 = d_hprebn.sum(0)", "d_b1 = d_hprebn.sum(0, keepdim=True)", "d_b1", KEEPDIM),
    ("ex1", "d_bnbias = d_hpreact.sum(0, keepdim=True)", "d_bnbias = d_hpreact.sum(0)", "d_bnbias", NO_KEEPDIM),
    (
        "ex1",
        "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bngain = (bnraw * d_hpreact).sum(0)",
        "d_bngain",
        NO_KEEPDIM,
    ),
    # summed over the wrong axis
    ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = d_logits.sum(1)", "d_b2", AXIS),
    ("ex1", "d_b1 = d_hprebn.sum(0)", "d_b1 = d_hprebn.sum(1)", "d_b1", AXIS),
    ("ex1", "d_bnbias = d_hpreact.sum(0, keepdim=True)", "d_bnbias = d_hpreact.sum(1, keepdim=True)", "d_bnbias", AXIS),
    # a variable used twice, one path forgotten (the += is missing)
    ("ex1", "d_counts += torch.ones_like(counts) * d_counts_sum", "pass", "d_counts", BRANCH + " probs"),
    ("ex1", "d_bndiff += (2 * bndiff) * d_bndiff2", "pass", "d_bndiff", BRANCH + " bnraw"),
    ("ex1", "d_hprebn += 1.0 / n * (torch.ones_like(hprebn) * d_bnmeani)", "pass", "d_hprebn", BRANCH + " bndiff"),
    (
        "ex1",
        "d_counts = counts_sum_inv * d_probs",
        "d_counts = torch.zeros_like(counts)",
        "d_counts",
        BRANCH + " counts_sum",
    ),
    # nothing flows
    (
        "ex1",
        "d_bnmeani = (-d_bndiff).sum(0, keepdim=True)",
        "d_bnmeani = torch.zeros_like(bnmeani)",
        "d_bnmeani",
        ZEROS,
    ),
    ("ex1", "d_C[Xb[row, col]] += d_emb[row, col]", "pass", "d_C", ZEROS),
    ("ex1", "d_emb = d_embcat.view(emb.shape)", "d_emb = torch.zeros_like(emb)", "d_emb", ZEROS),
    # the targets
    ("ex2", "d_logits[range(n), Yb] -= 1", "pass", "d_logits", TARGETS),
    ("ex2", "d_logits[range(n), Yb] -= 1", "d_logits[range(n), Yb] -= 2", "d_logits", TARGETS),
    ("ex2", "d_logits[range(n), Yb] -= 1", "d_logits[range(n), Yb] += 1", "d_logits", TARGETS),
    # a mix-up of names
    (
        "ex1",
        "d_bnbias = d_hpreact.sum(0, keepdim=True)",
        "d_bnbias = (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bnbias",
        "equals the gradient d_bngain",
    ),
    (
        "ex1",
        "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bngain = d_hpreact.sum(0, keepdim=True)",
        "d_bngain",
        "equals the gradient d_bnbias",
    ),
    # a few rows: the last example of the batch left out of the embedding's gradient
    ("ex1", "for row in range(Xb.shape[0]):", "for row in range(Xb.shape[0] - 1):", "d_C", "wrong only in row"),
]


def _mutant(tmp_path, cell: str, old: str, new: str):
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == cell)
    assert answer.source.count(old) == 1, old
    answer.source = answer.source.replace(old, new)
    path = tmp_path / "mutant.ipynb"
    nbformat.write(nb, str(path))
    return path


def _with_ex1(tmp_path, source: str):
    """The full-marks notebook with `source` as its whole Exercise 1 answer."""
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1").source = source
    path = tmp_path / "ex1.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_the_mutants_are_many_and_of_many_kinds():
    assert len(MUTANTS) >= 40
    assert len({hint.split(" (")[0].split(":")[0] for *_, hint in MUTANTS}) >= 12


@pytest.mark.parametrize("cell, old, new, variable, hint", MUTANTS, ids=[f"{v}:{h[:20]}" for _, _, _, v, h in MUTANTS])
def test_a_typical_mistake_gets_its_hint(tmp_path, pool, cell, old, new, variable, hint):
    report = grade_notebook(_mutant(tmp_path, cell, old, new), hidden_runs=(), pool=pool)
    exercise = {"ex1": "ex1", "ex2": "ex2", "ex3": "ex3"}[cell]
    verdict = next(v for v in report.variables if v.exercise == exercise and v.name == variable)
    assert verdict.points == 0, verdict
    assert hint in verdict.message, verdict.message


def test_one_early_mistake_costs_one_variable_and_is_named_the_root_cause(tmp_path, pool):
    # only d_probs is wrong (twice too large); every later line of Exercise 1 is right
    path = _mutant(tmp_path, "ex1", "d_probs = (1.0 / probs) * d_logprobs", "d_probs = 2 * (1.0 / probs) * d_logprobs")
    report = grade_notebook(path, pool=pool)
    ex1 = [v for v in report.variables if v.exercise == "ex1"]
    assert [v.name for v in ex1 if v.points < v.max_points] == ["d_probs"]
    assert report.score == report.max_score - 1  # Exercise 3, which starts from d_hpreact, keeps its point too
    assert sum(v.status == "wrong" for v in ex1) > 20  # the values below it are all off ...
    assert all(
        v.local_status in ("exact", "approximate") for v in ex1 if v.name != "d_probs"
    )  # ... their steps are not
    assert next(e for e in report.exercises if e.id == "ex1").root_cause == "d_probs"
    d_counts = next(v for v in ex1 if v.name == "d_counts")
    assert d_counts.message.endswith("off only because of an earlier mistake, in d_probs")


def test_zeros_all_the_way_down_earn_no_credit(tmp_path, pool):
    # consistent with each other, but nothing was computed: only the exactly-zero references may pass
    zeros = "\n".join(
        f"{v} = torch.zeros_like({v[2:]})"
        for v in (
            "d_logprobs",
            "d_probs",
            "d_counts_sum_inv",
            "d_counts_sum",
            "d_counts",
            "d_norm_logits",
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
            "d_emb",
            "d_C",
        )
    )
    source = zeros + "\nd_logit_maxes = torch.zeros_like(logit_maxes)\nd_b1 = torch.zeros_like(b1)"
    report = grade_notebook(_with_ex1(tmp_path, source), hidden_runs=(), pool=pool)
    earned = sorted(v.name for v in report.variables if v.exercise == "ex1" and v.points)
    assert earned == ["d_b1", "d_logit_maxes"]  # their true gradients are zero up to rounding


def test_answers_consistent_with_each_other_but_no_attempt_earn_nothing(tmp_path, pool):
    # all ones: d_emb = ones is what d_embcat = ones sends back through the view, but nothing was derived
    names = [v.name for v in assignments.rubric_of("backprop_ninja").exercises[0].variables]
    source = "\n".join(f"{v} = torch.ones_like({v[2:]})" for v in names)
    report = grade_notebook(_with_ex1(tmp_path, source), hidden_runs=(), pool=pool)
    assert len(names) == 26 and sum(v.points for v in report.variables if v.exercise == "ex1") == 0
