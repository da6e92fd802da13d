"""The lecture's tensors outside any notebook: the input of the grader's reference, and the worker's warm-up.

Guarantees: the same tensors always give the same bytes (so the reference's caches hit), and the warm-up runs
the lecture's own forward pass, read from the released lecture notebook, on tensors of the lecture's shapes.

Nothing here reads a learner's notebook. torch is imported only inside the functions that need it: `grader.grade`
imports this package at its top, and torch only once its workers have started, so that its import overlaps theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grader.assignment import Assignment

if TYPE_CHECKING:
    from torch import Tensor

LEAVES = ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias", "Xb", "Yb")
"""The tensors the grader's reference needs from the run: the parameters and the minibatch."""


def leaves(tensors: dict[str, Tensor]) -> bytes:
    """The parameters and minibatch as the lecture reference reads them (its `leaves` parameter):
    safetensors bytes, so that the same tensors give the same parameter (and the reference's caches hit)."""
    from safetensors.torch import save  # (it imports torch: see the module's docstring)

    return save({k: t.detach().contiguous() for k, t in tensors.items()})


def example_leaves(n_hidden: int = 64, batch: int = 32) -> dict[str, Tensor]:
    """Parameters and a minibatch of the lecture's shapes (for the warm-up and the picture of the graph)."""
    import torch  # (not at the top: see the module's docstring)

    g = torch.Generator().manual_seed(1)
    return {
        "C": torch.randn((27, 10), generator=g),
        "W1": torch.randn((30, n_hidden), generator=g) * 0.3,
        "b1": torch.randn(n_hidden, generator=g) * 0.1,
        "W2": torch.randn((n_hidden, 27), generator=g) * 0.1,
        "b2": torch.randn(27, generator=g) * 0.1,
        "bngain": torch.randn((1, n_hidden), generator=g) * 0.1 + 1,
        "bnbias": torch.randn((1, n_hidden), generator=g) * 0.1,
        "Xb": torch.randint(0, 27, (batch, 3), generator=g),
        "Yb": torch.randint(0, 27, (batch,), generator=g),
    }


def warm_up_source(lectures: Assignment) -> str:
    """What the worker runs once before forking runs: the lecture's forward pass (from `lectures`, the lecture's
    built-in assignment) on example tensors."""
    forward = lectures.cells["forward"]
    tensors = "\n".join(f"{k} = _t[{k!r}]" for k in LEAVES)
    return (
        "from grader.lecture import example_leaves\n_t = example_leaves()\n"
        + tensors
        + "\nn = Xb.shape[0]\nimport torch\nimport torch.nn.functional as F\n"
        + forward
        + "\nF.cross_entropy(logits, Yb); F.softmax(logits, 1); F.one_hot(Yb, 27)\n"
    )
