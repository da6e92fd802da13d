"""Stage 4: the reference, computed by the grader itself with autograd.

Runs the released notebook's own cells (trusted code, never the student's) with the same parameters
as the graded run and asks autograd for the gradients. The setup cells (the data set) run once per
value of the rubric's `setup_parameters` and are shared by all runs. For an answer that is a function,
the grader replays each recorded call with autograd: the released forward pass, at the weights and on
the batch of that very call. Everything here receives the `Assignment` and the run's parameters; results
are keyed by the typed keys of `grader.runs`.

- `forward`: the released forward pass with autograd, run once per parameter set (memos shared by all).
- `expected`: what each graded variable should be: gradients, values, training results.
- `steps`: each step of the chain on its own: step credit, the learner's own forward values, the graph.
- `calls`: function exercises: each recorded call replayed with autograd.
- `from_run`: the references a run's own values decide (its recorded calls, step credit), after it.
- `operands`: a wrong gradient's mistake named in the student's own line (one transpose or sum changed).

`forward`'s names (its lock, its memos) are what the other modules build on; outside the package, only the
names below are used.
"""

from grader.reference.calls import call_gradients
from grader.reference.expected import as_reference, gradients
from grader.reference.forward import forward_values
from grader.reference.from_run import replayed_calls, step_references
from grader.reference.operands import operand_hints
from grader.reference.steps import differing_steps, forward_edges, local_from, local_references, own_gradients

__all__ = [
    "as_reference",
    "call_gradients",
    "differing_steps",
    "forward_edges",
    "forward_values",
    "gradients",
    "local_from",
    "local_references",
    "operand_hints",
    "own_gradients",
    "replayed_calls",
    "step_references",
]
