"""Notebooks written the way learners keep the lecture's makemore part 4 notebook (for test_lecture.py).

`lecture_notebook(...)` builds one: no metadata of ours, the lecture's structure (data, `cmp`, parameters,
minibatch, a chunked forward pass with PyTorch's backward pass in the same cell, Exercises 1-4, then
calibration and sampling), with the variations learners' copies have: naming style, a renamed checker,
Colab data paths and shell escapes, half-done exercises, planted mistakes, saved outputs.
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

# (forward name, the line computing its gradient in Exercise 1), from the loss back; `{d}` is the prefix.
EX1 = [
    ("logprobs", "{d}logprobs = torch.zeros_like(logprobs)\n{d}logprobs[range(n), Yb] = -1.0 / n"),
    ("probs", "{d}probs = (1.0 / probs) * {d}logprobs"),
    ("counts_sum_inv", "{d}counts_sum_inv = (counts * {d}probs).sum(1, keepdim=True)"),
    ("counts", "{d}counts = counts_sum_inv * {d}probs"),
    (
        "counts_sum",
        "{d}counts_sum = (-counts_sum**-2) * {d}counts_sum_inv\n{d}counts += torch.ones_like(counts) * {d}counts_sum",
    ),
    ("norm_logits", "{d}norm_logits = counts * {d}counts"),
    ("logit_maxes", "{d}logits = {d}norm_logits.clone()\n{d}logit_maxes = (-{d}norm_logits).sum(1, keepdim=True)"),
    ("logits", "{d}logits += F.one_hot(logits.max(1).indices, num_classes=logits.shape[1]) * {d}logit_maxes"),
    ("h", "{d}h = {d}logits @ W2.T"),
    ("W2", "{d}W2 = h.T @ {d}logits"),
    ("b2", "{d}b2 = {d}logits.sum(0)"),
    ("hpreact", "{d}hpreact = (1.0 - h**2) * {d}h"),
    ("bngain", "{d}bngain = (bnraw * {d}hpreact).sum(0, keepdim=True)"),
    ("bnbias", "{d}bnbias = {d}hpreact.sum(0, keepdim=True)"),
    ("bnraw", "{d}bnraw = bngain * {d}hpreact"),
    ("bnvar_inv", "{d}bnvar_inv = (bndiff * {d}bnraw).sum(0, keepdim=True)"),
    ("bnvar", "{d}bnvar = (-0.5 * (bnvar + 1e-5)**-1.5) * {d}bnvar_inv"),
    ("bndiff2", "{d}bndiff2 = (1.0 / (n - 1)) * torch.ones_like(bndiff2) * {d}bnvar"),
    ("bndiff", "{d}bndiff = bnvar_inv * {d}bnraw\n{d}bndiff += (2 * bndiff) * {d}bndiff2"),
    ("bnmeani", "{d}bnmeani = (-{d}bndiff).sum(0)  # (64,): the lecture's cmp broadcasts it against (1, 64)"),
    ("hprebn", "{d}hprebn = {d}bndiff.clone()\n{d}hprebn += 1.0 / n * (torch.ones_like(hprebn) * {d}bnmeani)"),
    ("embcat", "{d}embcat = {d}hprebn @ W1.T"),
    ("W1", "{d}W1 = embcat.T @ {d}hprebn"),
    ("b1", "{d}b1 = {d}hprebn.sum(0)"),
    ("emb", "{d}emb = {d}embcat.view(emb.shape)"),
    (
        "C",
        "{d}C = torch.zeros_like(C)\nfor k in range(Xb.shape[0]):\n    for j in range(Xb.shape[1]):\n"
        "        {d}C[Xb[k, j]] += {d}emb[k, j]",
    ),
]
ORDER = [name for name, _ in EX1]

CHECKERS = {
    "cmp": """# utility function we will use later when comparing manual gradients to PyTorch gradients
def cmp(s, dt, t):
    ex = torch.all(dt == t.grad).item()
    app = torch.allclose(dt, t.grad)
    maxdiff = (dt - t.grad).abs().max().item()
    print(f'{s:15s} | exact: {str(ex):5s} | approximate: {str(app):5s} | maxdiff: {maxdiff}')""",
    # a learner's variant: another name, a shape check, and `t.grad is None` handled
    "compare_gradients": """def compare_gradients(label, mine, t):
    if t.grad is None:
        print(f"{label:15s} | no .grad: did you call retain_grad()?")
        return
    if mine.shape != t.grad.shape:
        print(f"{label:15s} | shape {tuple(mine.shape)} vs {tuple(t.grad.shape)}")
    exact = torch.all(mine == t.grad).item()
    approx = torch.allclose(mine, t.grad)
    print(f"{label:15s} | exact : {exact} | approx : {approx} | max_diff : {(mine - t.grad).abs().max().item():.2e}")""",
}

FORWARD = """# forward pass, chunked into steps small enough to backward through one at a time
emb = C[Xb]
embcat = emb.view(emb.shape[0], -1)
# Linear layer 1
hprebn = embcat @ W1 + b1
# BatchNorm layer
bnmeani = 1/n*hprebn.sum(0, keepdim=True)
bndiff = hprebn - bnmeani
bndiff2 = bndiff**2
bnvar = 1/(n-1)*(bndiff2).sum(0, keepdim=True)  # Bessel's correction
bnvar_inv = (bnvar + 1e-5)**-0.5
bnraw = bndiff * bnvar_inv
hpreact = bngain * bnraw + bnbias
# Non-linearity
h = torch.tanh(hpreact)
# Linear layer 2
logits = h @ W2 + b2
# cross entropy loss, by hand
logit_maxes = logits.max(1, keepdim=True).values
norm_logits = logits - logit_maxes
counts = norm_logits.exp()
counts_sum = counts.sum(1, keepdims=True)
counts_sum_inv = counts_sum**-1
probs = counts * counts_sum_inv
logprobs = probs.log()
loss = -logprobs[range(n), Yb].mean()

# PyTorch backward pass
for p in parameters:
    p.grad = None
for t in [logprobs, probs, counts, counts_sum, counts_sum_inv, norm_logits, logit_maxes, logits, h, hpreact,
          bnraw, bnvar_inv, bnvar, bndiff2, bndiff, hprebn, bnmeani, embcat, emb]:
    t.retain_grad()
loss.backward()
loss"""

EX4 = """# Exercise 4: putting it all together!
n_embd = 10
n_hidden = 200
g = torch.Generator().manual_seed(2147483647)
C = torch.randn((vocab_size, n_embd), generator=g)
W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5/3)/((n_embd * block_size)**0.5)
b1 = torch.randn(n_hidden, generator=g) * 0.1
W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.1
b2 = torch.randn(vocab_size, generator=g) * 0.1
bngain = torch.randn((1, n_hidden))*0.1 + 1.0
bnbias = torch.randn((1, n_hidden))*0.1
parameters = [C, W1, b1, W2, b2, bngain, bnbias]
for p in parameters:
    p.requires_grad = True

max_steps = 200000
batch_size = 32
n = batch_size
lossi = []

with torch.no_grad():
    for i in tqdm(range(max_steps)):
        ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g)
        Xb, Yb = Xtr[ix], Ytr[ix]
        emb = C[Xb]
        embcat = emb.view(emb.shape[0], -1)
        hprebn = embcat @ W1 + b1
        bnmean = hprebn.mean(0, keepdim=True)
        bnvar = hprebn.var(0, keepdim=True, unbiased=True)
        bnvar_inv = (bnvar + 1e-5)**-0.5
        bnraw = (hprebn - bnmean) * bnvar_inv
        hpreact = bngain * bnraw + bnbias
        h = torch.tanh(hpreact)
        logits = h @ W2 + b2
        loss = F.cross_entropy(logits, Yb)
        dlogits = F.softmax(logits, 1)
        dlogits[range(n), Yb] -= 1
        dlogits /= n
        dW2 = h.T @ dlogits
        db2 = dlogits.sum(0)
        dh = dlogits @ W2.T
        dhpreact = (1.0 - h**2) * dh
        dbngain = (bnraw * dhpreact).sum(0, keepdim=True)
        dbnbias = dhpreact.sum(0, keepdim=True)
        dhprebn = bngain*bnvar_inv/n * (n*dhpreact - dhpreact.sum(0) - n/(n-1)*bnraw*(dhpreact*bnraw).sum(0))
        dembcat = dhprebn @ W1.T
        dW1 = embcat.T @ dhprebn
        db1 = dhprebn.sum(0)
        demb = dembcat.view(emb.shape)
        dC = torch.zeros_like(C)
        for k in range(Xb.shape[0]):
            for j in range(Xb.shape[1]):
                dC[Xb[k, j]] += demb[k, j]
        grads = [dC, dW1, db1, dW2, db2, dbngain, dbnbias]
        lr = 0.1 if i < 100000 else 0.01
        for p, grad in zip(parameters, grads):
            p.data += -lr * grad
        if i % 10000 == 0:
            print(f'{i:7d}/{max_steps:7d}: {loss.item():.4f}')
        lossi.append(loss.log10().item())
        # if i >= 100: # TODO: delete early breaking when you're ready to train the full net
        #     break"""

AFTER = [
    """# calibrate the batch norm at the end of training
with torch.no_grad():
    emb = C[Xtr]
    embcat = emb.view(emb.shape[0], -1)
    hpreact = embcat @ W1 + b1
    bnmean = hpreact.mean(0, keepdim=True)
    bnvar = hpreact.var(0, keepdim=True, unbiased=True)""",
    """plt.plot(torch.tensor(lossi).view(-1, 1000).mean(1))
plt.show()""",
    """# sample from the model
g = torch.Generator().manual_seed(2147483647 + 10)
for _ in range(20):
    out = []
    context = [0] * block_size
    while True:
        emb = C[torch.tensor([context])]
        h = torch.tanh(bngain * (emb.view(1, -1) @ W1 + b1 - bnmean) * (bnvar + 1e-5)**-0.5 + bnbias)
        probs = F.softmax(h @ W2 + b2, dim=1)
        ix = torch.multinomial(probs, num_samples=1, generator=g).item()
        context = context[1:] + [ix]
        out.append(ix)
        if ix == 0:
            break
    print(''.join(itos[i] for i in out))""",
]


def _code(source: str, outputs: list | None = None, count: int | None = None):
    cell = new_code_cell(source, outputs=outputs or [], execution_count=count)
    return cell


def lecture_notebook(
    *,
    style: str = "d",
    checker: str = "cmp",
    data_path: str = "names.txt",
    colab: bool = False,
    wget: bool = False,
    ex1_upto: str | None = None,
    mistakes: dict[str, str] | None = None,
    copied: tuple[str, ...] = (),
    saved_outputs: dict[str, bool] | None = None,
    tqdm: bool = True,
    markers: bool = True,
) -> nbformat.NotebookNode:
    """A lecture-style notebook.

    style: "d" (`dlogprobs`) or "d_" (`d_logprobs`). checker: "cmp" or "compare_gradients".
    ex1_upto: stop Exercise 1 after this variable (half done: the rest of its checks commented out).
    mistakes: forward name -> the Exercise 1 line(s) to use instead (with `{d}`).
    copied: forward names whose Exercise 1 gradient is copied from autograd (`dhpreact = hpreact.grad`).
    saved_outputs: forward name -> the `approximate` flag its saved cmp printout shows (Exercise 1).
    """
    d = style
    mistakes = mistakes or {}
    cells = [new_markdown_cell("## makemore: becoming a backprop ninja")]
    if colab:
        cells.append(_code("from google.colab import drive\ndrive.mount('/content/drive')"))
    if wget:
        cells.append(
            _code(
                "# download the names.txt file from github\n"
                "!wget https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
            )
        )
    imports = "import torch\nimport torch.nn.functional as F\nimport matplotlib.pyplot as plt # for making figures\n%matplotlib inline"
    if tqdm:
        imports += "\nfrom tqdm.notebook import tqdm"
    else:
        imports += "\ntqdm = lambda x: x"
    cells.append(_code(imports))
    cells.append(
        _code(
            f"# read in all the words\nwords = open({data_path!r}, 'r').read().splitlines()\n"
            "print(len(words))\nprint(max(len(w) for w in words))\nprint(words[:8])"
        )
    )
    cells.append(
        _code("""# build the vocabulary of characters and mappings to/from integers
chars = sorted(list(set(''.join(words))))
stoi = {s:i+1 for i,s in enumerate(chars)}
stoi['.'] = 0
itos = {i:s for s,i in stoi.items()}
vocab_size = len(itos)
print(itos)
print(vocab_size)""")
    )
    cells.append(
        _code("""# build the dataset
block_size = 3 # context length: how many characters do we take to predict the next one?

def build_dataset(words):
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + '.':
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix] # crop and append
    X = torch.tensor(X)
    Y = torch.tensor(Y)
    print(X.shape, Y.shape)
    return X, Y

import random
random.seed(42)
random.shuffle(words)
n1 = int(0.8*len(words))
n2 = int(0.9*len(words))

Xtr,  Ytr  = build_dataset(words[:n1])     # 80%
Xdev, Ydev = build_dataset(words[n1:n2])   # 10%
Xte,  Yte  = build_dataset(words[n2:])     # 10%""")
    )
    cells.append(new_markdown_cell("ok biolerplate done, now we get to the action:"))
    cells.append(_code(CHECKERS[checker]))
    cells.append(
        _code("""n_embd = 10 # the dimensionality of the character embedding vectors
n_hidden = 64 # the number of neurons in the hidden layer of the MLP

g = torch.Generator().manual_seed(2147483647) # for reproducibility
C  = torch.randn((vocab_size, n_embd),            generator=g)
# Layer 1
W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5/3)/((n_embd * block_size)**0.5)
b1 = torch.randn(n_hidden,                        generator=g) * 0.1 # using b1 just for fun, it's useless because of BN
# Layer 2
W2 = torch.randn((n_hidden, vocab_size),          generator=g) * 0.1
b2 = torch.randn(vocab_size,                      generator=g) * 0.1
# BatchNorm parameters
bngain = torch.randn((1, n_hidden))*0.1 + 1.0
bnbias = torch.randn((1, n_hidden))*0.1

parameters = [C, W1, b1, W2, b2, bngain, bnbias]
print(sum(p.nelement() for p in parameters)) # number of parameters in total
for p in parameters:
    p.requires_grad = True""")
    )
    cells.append(
        _code("""batch_size = 32
n = batch_size # a shorter variable also, for convenience
# construct a minibatch
ix = torch.randint(0, Xtr.shape[0], (batch_size,), generator=g)
Xb, Yb = Xtr[ix], Ytr[ix] # batch X,Y""")
    )
    cells.append(
        _code(
            FORWARD,
            [new_output("execute_result", {"text/plain": "tensor(3.3482, grad_fn=<NegBackward0>)"}, execution_count=9)],
            9,
        )
    )

    # Exercise 1
    lines = (
        [
            "# Exercise 1: backprop through the whole thing manually,",
            "# backpropagating through exactly all of the variables",
            "# as they are defined in the forward pass above, one by one",
            "",
        ]
        if markers
        else []
    )
    done = ORDER if ex1_upto is None else ORDER[: ORDER.index(ex1_upto) + 1]
    for name, line in EX1:
        if name not in done:
            continue
        if name in copied:
            lines.append(f"{d}{name} = {name}.grad")
        else:
            lines.append(mistakes.get(name, line).format(d=d))
    if ex1_upto is not None:
        lines.append(f"{d}h = None # TODO")
    lines.append("")
    outputs_text = []
    for name in ORDER:
        call = f"{checker}({name!r}, {d}{name}, {name})"
        if name in done:
            lines.append(call)
            if saved_outputs and name in saved_outputs:
                flag = saved_outputs[name]
                outputs_text.append(
                    f"{name:15s} | exact: {flag!s:5s} | approximate: {flag!s:5s} | maxdiff: {0.0 if flag else 0.0123}\n"
                )
        else:
            lines.append("# " + call)
    outputs = [new_output("stream", name="stdout", text="".join(outputs_text))] if outputs_text else []
    cells.append(_code("\n".join(lines), outputs, 10 if outputs else None))

    # Exercise 2
    cells.append(
        _code(
            ("# Exercise 2: backprop through cross_entropy but all in one go\n" if markers else "")
            + "# forward pass\nloss_fast = F.cross_entropy(logits, Yb)\nprint(loss_fast.item(), 'diff:', (loss_fast - loss).item())"
        )
    )
    cells.append(
        _code(
            f"# backward pass\n{d}logits = F.softmax(logits, 1)\n{d}logits[range(n), Yb] -= 1\n{d}logits /= n\n\n"
            f"{checker}('logits', {d}logits, logits) # I can only get approximate to be true"
        )
    )
    # Exercise 3
    cells.append(
        _code(
            ("# Exercise 3: backprop through batchnorm but all in one go\n" if markers else "")
            + "# forward pass\nhpreact_fast = bngain * (hprebn - hprebn.mean(0, keepdim=True)) / "
            "torch.sqrt(hprebn.var(0, keepdim=True, unbiased=True) + 1e-5) + bnbias\n"
            "print('max diff:', (hpreact_fast - hpreact).abs().max())"
        )
    )
    cells.append(
        _code(
            f"# backward pass\n{d}hprebn = bngain*bnvar_inv/n * (n*{d}hpreact - {d}hpreact.sum(0) - "
            f"n/(n-1)*bnraw*({d}hpreact*bnraw).sum(0))\n\n{checker}('hprebn', {d}hprebn, hprebn)"
        )
    )
    cells.append(_code(EX4 if markers else EX4.replace("# Exercise 4: putting it all together!\n", "")))
    cells.extend(_code(s) for s in AFTER)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["colab"] = {"provenance": []} if colab else {}
    nbformat.validate(nb)
    return nb


# --- issue 19: notebooks as learners keep them, one per pattern (written to tests/notebooks/lecture) ------------


def _printout(name: str, approximate: bool = True) -> str:
    """A saved line of the lecture's cmp, as the learner's run printed it."""
    return f"{name:15s} | exact: {approximate!s:5s} | approximate: {approximate!s:5s} | maxdiff: 0.0\n"


def _checked_cell(lines: str, names: list[str], count: int, d: str = "d"):
    """A cell computing one step (or a few) of the chain, with a cmp after it and its saved printout."""
    calls = "\n".join(f"cmp({name!r}, {d}{name}, {name})" for name in names)
    text = "".join(_printout(name) for name in names)
    return _code(f"{lines}\n{calls}", [new_output("stream", name="stdout", text=text)], count)


def _upto_forward(nb: nbformat.NotebookNode) -> list:
    """The cells of a lecture-style notebook up to its forward pass (the exercises left out)."""
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("# forward pass"))
    return list(nb.cells[: at + 1])


def _tail(nb: nbformat.NotebookNode) -> list:
    """The cells of a lecture-style notebook from Exercise 2's forward pass on."""
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "loss_fast = F.cross_entropy" in c.source)
    return list(nb.cells[at:])


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.validate(nb)
    return nb


# Exercise 1 one step per cell, as learners check it: dcounts once both of its parts are in (after dcounts_sum)
_LINES = dict(EX1)
STEPS = (
    [(name, _LINES[name]) for name in ORDER[:3]]
    + [
        ("counts_sum", "{d}counts_sum = (-counts_sum**-2) * {d}counts_sum_inv"),
        ("counts", "{d}counts = counts_sum_inv * {d}probs\n{d}counts += torch.ones_like(counts) * {d}counts_sum"),
    ]
    + [(name, _LINES[name]) for name in ORDER[5:]]
)


def one_gradient_per_cell(
    *, alias: bool = False, chain_again: bool = True, markers: bool = False
) -> nbformat.NotebookNode:
    """Exercise 1 one gradient per cell, a cmp after each (dlogits and dhprebn built up over two cells, as the
    forward pass makes them), then the whole chain again in one cell; by default no `# Exercise` markers anywhere.

    alias: `dhprebn = dbndiff` without a clone, then `dhprebn += ...` in the next cell (dbndiff's own cmp ran before).
    """
    base = lecture_notebook(markers=markers)
    cells = _upto_forward(base)
    count = 10
    for name, line in STEPS:
        if markers and name == ORDER[0]:
            line = "# Exercise 1: backprop through the whole thing manually, one step at a time\n" + line
        if alias and name == "hprebn":
            cells.append(_code("dhprebn = dbndiff  # starts from dbndiff; the mean's part is added next", [], count))
            count += 1
            cells.append(_checked_cell("dhprebn += 1.0 / n * (torch.ones_like(hprebn) * dbnmeani)", ["hprebn"], count))
        else:
            cells.append(_checked_cell(line.format(d="d"), [name], count))
        count += 1
    if chain_again:
        chain = "\n".join(line.format(d="d") for _, line in EX1)
        cells.append(new_markdown_cell("all of it again in one go, to be sure it holds together:"))
        cells.append(_checked_cell(f"# the whole chain, top to bottom\n{chain}\n", ORDER, count))
    return _notebook(cells + _tail(base))


def batchnorm_ones_and_zeros() -> nbformat.NotebookNode:
    """The batch-norm gain and shift initialised the standard way (ones and zeros), as in nn.BatchNorm1d."""
    nb = lecture_notebook()
    params = next(c for c in nb.cells if c.source.startswith("n_embd = 10"))
    params.source = params.source.replace(
        "bngain = torch.randn((1, n_hidden))*0.1 + 1.0",
        "bngain = torch.ones((1, n_hidden))  # as nn.BatchNorm1d starts",
    )
    params.source = params.source.replace(
        "bnbias = torch.randn((1, n_hidden))*0.1", "bnbias = torch.zeros((1, n_hidden))"
    )
    assert "torch.ones((1, n_hidden))" in params.source and "torch.zeros((1, n_hidden))" in params.source
    return nb


WORD_PULL = """# my own experiment between the exercises: how hard does each word pull on the output layer?
def word_pull(some_words):
    pulls = []
    for w in some_words:
        Xw, Yw = build_dataset([w])
        hw = torch.tanh(C[Xw].view(Xw.shape[0], -1) @ W1 + b1)
        dlogits = F.softmax(hw @ W2 + b2, 1)
        dlogits[range(Xw.shape[0]), Yw] -= 1
        dh = dlogits @ W2.T
        dW2 = hw.T @ dlogits / Xw.shape[0]
        db2 = dlogits.sum(0) / Xw.shape[0]
        pulls.append((w, round(dW2.norm().item(), 3), round(dh.norm().item(), 3), round(db2.norm().item(), 3)))
    return pulls

word_pull(words[:4])"""


def words_loop_between_exercises() -> nbformat.NotebookNode:
    """Unmarked exercises, and between Exercises 1 and 2 a cell whose loop over words computes gradients for each
    word (and updates no parameter: it is no training loop)."""
    nb = lecture_notebook(markers=False)
    at = next(i for i, c in enumerate(nb.cells) if "loss_fast = F.cross_entropy" in c.source)
    nb.cells.insert(at, _code(WORD_PULL))
    return nb


def equivalent_forward() -> nbformat.NotebookNode:
    """The forward pass with `1.0 / torch.sqrt(...)` for the inverse standard deviation, every draw from one seeded
    generator: the same numbers as the lecture's formula up to the last bits, so that the learner's cmp says
    approximate where the lecture's own forward values, with their rounding, would make dW2 look wrong (measured:
    seed 42 with the grader's names.txt)."""
    nb = lecture_notebook(saved_outputs={"W2": True, "bnvar_inv": True})
    params = next(c for c in nb.cells if c.source.startswith("n_embd = 10"))
    params.source = (
        params.source.replace("manual_seed(2147483647)", "manual_seed(42)")
        .replace(
            "bngain = torch.randn((1, n_hidden))*0.1 + 1.0",
            "bngain = torch.randn((1, n_hidden), generator=g)*0.1 + 1.0",
        )
        .replace("bnbias = torch.randn((1, n_hidden))*0.1", "bnbias = torch.randn((1, n_hidden), generator=g)*0.1")
    )
    forward = next(c for c in nb.cells if c.source.startswith("# forward pass"))
    forward.source = forward.source.replace(
        "bnvar_inv = (bnvar + 1e-5)**-0.5", "bnvar_inv = 1.0 / torch.sqrt(bnvar + 1e-5)  # 1/std, easier to read"
    )
    assert "generator=g)*0.1 + 1.0" in params.source and "torch.sqrt(bnvar" in forward.source
    return nb


def forward_pass_only() -> nbformat.NotebookNode:
    """Set-up and the forward pass, then an empty cell for the backward pass: no answers yet."""
    cells = _upto_forward(lecture_notebook(markers=False))
    cells.append(new_markdown_cell("now the backward pass by hand, one line at a time (tomorrow)"))
    cells.append(_code("# my backprop goes here\n"))
    return _notebook(cells)


# --- issue 26: the last few percent (written to tests/notebooks/lecture as well) --------------------------------

LECTURE_EX1_TEMPLATE = """# Exercise 1: backprop through the whole thing manually,
# backpropagating through exactly all of the variables
# as they are defined in the forward pass above, one by one

# -----------------
# YOUR CODE HERE :)
# -----------------
"""
"""The head of the lecture's Exercise 1 cell as it is handed out, kept by learners who write below it."""


def _ex1(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# Exercise 1"))


def exercise_comment_block() -> nbformat.NotebookNode:
    """Exercise 1 under the lecture's own comment block, the first six gradients (`dlogprobs` to `dnorm_logits`)
    each followed by its cmp, the other checks still commented out; the saved printout shows the six exact."""
    nb = lecture_notebook()
    lines = [LECTURE_EX1_TEMPLATE]
    for name, line in STEPS[:6]:
        lines.append(f"{line.format(d='d')}\ncmp({name!r}, d{name}, {name})")
    lines += [f"# cmp({name!r}, d{name}, {name})" for name, _ in STEPS[6:]]
    cell = _ex1(nb)
    cell.source = "\n".join(lines)
    cell.outputs = [new_output("stream", name="stdout", text="".join(_printout(n) for n, _ in STEPS[:6]))]
    cell.execution_count = 10
    return nb


def forward_slip() -> nbformat.NotebookNode:
    """The learner's own slip in the forward pass (`bnvar - 1e-5`, not `+`), and every gradient written for the
    forward pass they ran: their saved cmp printouts say all exact."""
    nb = lecture_notebook(
        mistakes={"bnvar": "{d}bnvar = (-0.5 * (bnvar - 1e-5)**-1.5) * {d}bnvar_inv"},
        saved_outputs=dict.fromkeys(ORDER, True),
    )
    forward = next(c for c in nb.cells if c.source.startswith("# forward pass"))
    forward.source = forward.source.replace("bnvar_inv = (bnvar + 1e-5)**-0.5", "bnvar_inv = (bnvar - 1e-5)**-0.5")
    assert "(bnvar - 1e-5)**-0.5" in forward.source
    return nb


def own_tensor_name() -> nbformat.NotebookNode:
    """`bndiffsq` for the lecture's `bndiff2`, everywhere but the label of its check: `cmp('bndiff2', dbndiffsq,
    bndiffsq)`."""
    nb = lecture_notebook(saved_outputs=dict.fromkeys(ORDER, True))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("bndiff2", "bndiffsq").replace("cmp('bndiffsq'", "cmp('bndiff2'")
    assert "cmp('bndiff2', dbndiffsq, bndiffsq)" in _ex1(nb).source
    return nb


def deleted_lines() -> nbformat.NotebookNode:
    """Exercise 1 run and saved with every check right, then two of its lines deleted (`dbnvar_inv = ...`,
    `dbndiff = ...`): the cell as kept uses dbnvar_inv before any line assigns it."""
    nb = lecture_notebook(saved_outputs=dict.fromkeys(ORDER, True))
    cell = _ex1(nb)
    kept = [line for line in cell.source.splitlines() if not line.startswith(("dbnvar_inv = ", "dbndiff = bnvar_inv"))]
    assert len(kept) == len(cell.source.splitlines()) - 2
    cell.source = "\n".join(kept)
    return nb


def older_printout() -> nbformat.NotebookNode:
    """A saved printout from an older version of the Exercise 1 cell: dW2 not close there (maxdiff 0.0123), where
    the code as kept is right."""
    return lecture_notebook(saved_outputs={**dict.fromkeys(ORDER, True), "W2": False})


LEARNERS = {
    "batchnorm_ones_and_zeros": batchnorm_ones_and_zeros,
    "one_gradient_per_cell": one_gradient_per_cell,
    "words_loop_between_exercises": words_loop_between_exercises,
    "equivalent_forward": equivalent_forward,
    "alias_changed_after_its_check": lambda: one_gradient_per_cell(alias=True, chain_again=False, markers=True),
    "forward_pass_only": forward_pass_only,
    "exercise_comment_block": exercise_comment_block,
    "forward_slip": forward_slip,
    "own_tensor_name": own_tensor_name,
    "deleted_lines": deleted_lines,
    "older_printout": older_printout,
}
"""The behaviour notebooks of issues 19 and 26 by name (one per pattern), as `python tests/lecture_notebooks.py`
writes them."""


if __name__ == "__main__":
    from pathlib import Path

    folder = Path(__file__).resolve().parent / "notebooks" / "lecture"
    for stem, build in LEARNERS.items():
        nbformat.write(build(), folder / f"{stem}.ipynb")
        print(f"wrote {folder / stem}.ipynb")
