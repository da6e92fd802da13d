"""`grader.check`, the self-check students run inside the notebook."""

from __future__ import annotations

import nbformat
import pytest
import torch

from grader import assets, check, check_training


def _with_grad():
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    (x**2).sum().backward()
    return x


def test_right_answer_prints_the_cmp_line_and_returns_true(capsys):
    x = _with_grad()
    assert check("x", 2 * x.detach(), x) is True
    assert capsys.readouterr().out == "x               | exact: True  | approximate: True  | maxdiff: 0.0\n"


def test_wrong_shape_is_explained_before_submitting(capsys):
    x = _with_grad()
    assert check("x", 2 * x.detach()[0], x) is False
    out = capsys.readouterr().out
    assert "exact: False" in out and "d_x: shape (3,), expected (1, 3) -- keep the dimension (keepdim=True)" in out


def test_stub_and_missing_reference_say_what_to_do(capsys):
    x = _with_grad()
    assert check("x", None, x) is False
    assert "d_x is None: replace the stub with your gradient" in capsys.readouterr().out
    assert check("y", torch.ones(3), torch.ones(3)) is False
    assert "y.grad is None" in capsys.readouterr().out


def test_uses_the_rubric_tolerance_of_the_notebooks_own_assignment(capsys, monkeypatch):
    # Jupyter tells the kernel which notebook it runs; the release carries its rubric (`grader release`)
    monkeypatch.setenv("JPY_SESSION_NAME", str(assets.assignments_dir() / "backprop_ninja.ipynb"))
    b1 = torch.zeros(4, requires_grad=True)
    b1.grad = torch.tensor([1e-8, -1.4e-8, 0.0, 3e-9])  # rounding noise, as autograd returns for d_b1
    assert check("b1", torch.zeros(4), b1) is True  # the rubric's atol for d_b1
    assert check("other", torch.zeros(4), b1) is False  # plain allclose defaults


def test_never_takes_a_tolerance_from_another_assignment_by_the_variables_name(capsys, monkeypatch, tmp_path):
    # a notebook of another assignment (here one that carries no copy) with a d_b1 of its own: allclose's defaults
    other = tmp_path / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), other)
    monkeypatch.setenv("JPY_SESSION_NAME", str(other))
    b1 = torch.zeros(4, requires_grad=True)
    b1.grad = torch.tensor([1e-8, -1.4e-8, 0.0, 3e-9])
    assert check("b1", torch.zeros(4), b1) is False
    monkeypatch.delenv("JPY_SESSION_NAME")  # no notebook known at all: the same
    assert check("b1", torch.zeros(4), b1) is False


def test_a_warning_never_reaches_stderr(capsys):
    # nbgrader scores a test cell 0 when it writes to stderr: reading .grad of a non-leaf tensor warns
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    assert check("y", torch.ones(3), y) is False
    assert capsys.readouterr().err == ""


# check_training on a tiny network: forward/backward read module-level weights, as the notebook's do
W = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]], requires_grad=True)
b = torch.tensor([0.1, -0.2], requires_grad=True)
X = torch.randn((40, 3), generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(2))


def _forward(Xb, Yb):
    logits = Xb @ W + b
    return torch.nn.functional.cross_entropy(logits, Yb), (logits,)


def _backward(Xb, Yb, logits):
    d_logits = torch.softmax(logits, 1)
    d_logits[range(Xb.shape[0]), Yb] -= 1
    d_logits /= Xb.shape[0]
    return Xb.T @ d_logits, d_logits.sum(0)


def _train(backward, capsys, steps=5):
    g = torch.Generator().manual_seed(3)
    before, state = [W.detach().clone(), b.detach().clone()], g.get_state()
    points = check_training(_forward, backward, [W, b], ["W", "b"], X, Y, batch_size=8, generator=g, steps=steps)
    assert torch.equal(W.detach(), before[0]) and torch.equal(b.detach(), before[1])  # put back
    assert torch.equal(g.get_state(), state)
    return points, capsys.readouterr()


def test_check_training_gives_a_point_per_parameter_and_one_for_the_loss(capsys):
    points, out = _train(_backward, capsys)
    assert points == 3 and out.err == ""
    assert out.out.count("approximate: True") == 4  # W and b at steps 1 and 5
    assert "loss @5" in out.out and "close" in out.out


def test_check_training_catches_a_gradient_that_goes_wrong_once_the_weights_move(capsys):
    frozen = W.detach().clone()

    def stale(Xb, Yb, logits):  # both gradients computed through a stale copy of W: right at the first step only
        return _backward(Xb, Yb, Xb @ frozen + b)

    points, out = _train(stale, capsys)
    assert points == 1  # neither parameter; the loss is still close after five small steps
    lines = out.out.splitlines()
    assert lines[0].startswith("W @1") and "approximate: True" in lines[0]
    assert lines[2].startswith("W @5") and "approximate: False" in lines[2] and "d_W: off by up to" in lines[2]


def test_check_training_scores_zero_when_backward_breaks_the_run(capsys):
    points, out = _train(lambda Xb, Yb, logits: (None, None), capsys)
    assert points == 0 and "raised TypeError" in out.out and out.err == ""


def test_check_training_gives_nothing_for_gradients_it_did_not_get(capsys):
    points, out = _train(lambda Xb, Yb, logits: _backward(Xb, Yb, logits)[:1], capsys)
    assert points == 0 and "returned 1 gradients for 2 parameters" in out.out


# --- issue 19: the hints `grader check` gives, printed by the self-check --------------------------------------


def _small_graph():
    """A tiny forward pass with autograd's gradients retained, as the notebook's namespace holds it."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn((3, 4), generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    X = torch.randn((8, 3), generator=g)
    Yb = torch.randint(0, 4, (8,), generator=g)
    logits = X @ W + b
    logits.retain_grad()
    torch.nn.functional.cross_entropy(logits, Yb).backward()
    return {"W": W, "b": b, "X": X, "Yb": Yb, "logits": logits}


def _line(capsys) -> str:
    return capsys.readouterr().out.strip()


def test_check_names_a_factor_a_sign_and_zeros_as_the_grader_does(capsys):
    ns = _small_graph()
    W, b, logits = ns["W"], ns["b"], ns["logits"]
    assert check("W", 2 * W.grad, W, namespace=ns) is False
    assert "d_W: it is the right gradient times 2: a factor too many or too few? (off by up to" in _line(capsys)
    check("logits", logits.grad * 8, logits, namespace=ns)  # n = 8, from the namespace's Yb
    assert "times n (= 8)" in _line(capsys)
    check("b", -b.grad, b, namespace=ns)
    assert "d_b: the sign is flipped" in _line(capsys)
    check("W", torch.zeros_like(W), W, namespace=ns)
    assert "it is all zeros" in _line(capsys)


def test_check_names_shapes_and_mix_ups_with_the_notebooks_other_gradients(capsys):
    ns = _small_graph()
    W, b, logits = ns["W"], ns["b"], ns["logits"]
    check("W", W.grad.T, W, namespace=ns)
    assert "expected (3, 4) -- transposed?" in _line(capsys)
    check("b", logits.grad.sum(1), b, namespace=ns)  # (8,) for (4,): the batch's axis kept
    assert "summed over the wrong axis" in _line(capsys)
    ns["b2"] = torch.ones(4, requires_grad=True)
    ns["b2"].grad = b.grad * 3  # another tensor of b's shape with a gradient: the answer is that one
    check("b", b.grad * 3, b, namespace=ns)
    assert "it equals the gradient d_b2: a mix-up of names?" in _line(capsys)


def test_check_gives_no_hint_for_rounding(capsys):
    ns = _small_graph()
    W = ns["W"]
    check("W", W.grad * (1 + 3e-5), W, namespace=ns)  # off by rounding's order, past allclose's rtol
    line = _line(capsys)
    assert "approximate: False" in line and line.endswith("in size")  # the distance only
    assert " d_W: off by up to" in line


# Typical mistakes, each in a gradient that no other one is computed from (so each line shows its own mistake):
# (grade_id, the solution's line, the mistake, the variable, the label its check prints)
KERNEL_MISTAKES = (
    ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = -d_logits.sum(0)", "d_b2", "b2"),  # sign
    ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = 2 * h.T @ d_logits", "d_W2", "W2"),  # a factor 2
    ("ex1", "d_W1 = embcat.T @ d_hprebn", "d_W1 = d_hprebn.T @ embcat", "d_W1", "W1"),  # transposed
    (
        "ex1",
        "d_bnbias = d_hpreact.sum(0, keepdim=True)",
        "d_bnbias = d_hpreact.sum(0)",
        "d_bnbias",
        "bnbias",
    ),  # keepdim
    ("ex1", "d_b1 = d_hprebn.sum(0)", "d_b1 = d_hprebn.sum(1)", "d_b1", "b1"),  # the axis
    (
        "ex1",
        "        d_C[Xb[row, col]] += d_emb[row, col]",
        "        pass  # TODO route d_emb back into C",
        "d_C",
        "C",
    ),  # zeros
    (
        "ex1",
        "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
        "d_bngain = d_hpreact.sum(0, keepdim=True)",
        "d_bngain",
        "bngain",
    ),  # a mix-up: this is d_bnbias
    ("ex4", "d_b2 = d_logits.sum(0)", "d_b2 = -d_logits.sum(0)", "d_b2", "b2 @1"),  # sign, in backward()
)


def _kernel_lines(nb, cwd) -> dict[str, str]:
    """Run `nb` in a real Jupyter kernel (nbclient; `skip-execution` cells skipped, as nbgrader's runs do): each
    check line's label -> its message (what follows the maxdiff)."""
    from nbclient import NotebookClient

    from grader.notebook import grade_id

    NotebookClient(
        nb, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    out: dict[str, str] = {}
    for cell in nb.cells:
        if grade_id(cell) not in ("check_ex1", "check_ex4"):
            continue
        assert [o for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"] == []
        for line in "".join(o.text for o in cell.outputs if o.output_type == "stream").splitlines():
            parts = line.split(" | ")
            if len(parts) >= 5:
                out.setdefault(parts[0].strip(), " | ".join(parts[4:]))
    return out


@pytest.mark.slow
def test_the_release_check_cells_in_a_kernel_print_the_hints_grader_check_gives(tmp_path, pool):
    import nbformat
    from conftest import answered

    from grader import grade

    nb = answered("backprop_ninja", tuple((gid, old, new) for gid, old, new, _, _ in KERNEL_MISTAKES))
    path = tmp_path / "backprop_ninja.ipynb"
    nbformat.write(nb, path)
    report = grade.grade_notebook(path, pool=pool)
    by = {(v.exercise, v.name): v for v in report.variables}
    printed = _kernel_lines(nb, tmp_path)
    hints = (
        "the sign is flipped",
        "times 2: a factor",
        "-- transposed?",
        "keep the dimension (keepdim=True)",
        "summed over the wrong axis",
        "it is all zeros",
        "it equals the gradient d_bnbias",
    )
    for (gid, _, _, variable, label), hint in zip(KERNEL_MISTAKES, (*hints, hints[0])):
        graded = by[(gid, variable)]
        assert graded.points == 0 and hint in graded.message, graded
        # the grader says at which step of the short training run; the kernel's label says it (@1)
        assert printed[label] == graded.message.removesuffix(" (at the first step)"), (
            label,
            printed[label],
            graded.message,
        )
    wrong = {m[4] for m in KERNEL_MISTAKES} | {"b2 @25"}  # (backward()'s d_b2 is as wrong at the last step)
    assert [label for label, message in printed.items() if message and label not in wrong] == []
    lost = [(v.exercise, v.name) for v in report.variables if v.points < v.max_points]
    # every other gradient passed, in the kernel as in the grader (the short training run's loss goes wrong with d_b2)
    assert sorted(lost) == sorted({(m[0], m[3]) for m in KERNEL_MISTAKES} | {("ex4", "loss")})
