"""Lecture notebooks: the lecture's own makemore part 4 notebook, graded as learners keep it.

Such a notebook carries no metadata of ours. It is recognised from its code, read top to bottom. The modules,
in the order a lecture notebook meets them:

* `cells`: its cells read once (magics translated, each parsed, `# Exercise N` markers noted), and the
  syntax-tree helpers the other modules share (the check calls, the names a statement assigns);
* `recognition`: which cells are which exercise (placed by the check calls and the order of the chain), which
  of its names are the lecture's tensors, which variable holds each gradient; `is_ours` tells a notebook of
  ours (graded by its own rubric) from the lecture's; `rubric_for` gives the lecture rubric in its names;
* `run_plan`: the cells the child runs, up to Exercise 3, and what it captures; each cell made safe and quick
  to run here by `rewrite`, each check call replaced by a record of the gradient as that call saw it
  (`own_checks.checks`);
* [the run: `grader/grade.py`, with `tensors.warm_up_source` run once by the worker beforehand];
* `grading`: the reference (autograd at the notebook's own forward tensors, given as `tensors.leaves`) and the
  score, each gradient as its check call saw it;
* `own_checks`: last, whether the notebook's own saved `cmp` printouts agree with the grader.

The lecture's data (its rubric, its released notebook) is in `data/`, which student runs cannot see; no code
lives there. Nothing in this package runs the notebook's code: `grader/grade.py` does, in the sandbox. The names
below are the package's interface; `grading` is imported on its own (it imports torch). The modules' other public
names (`cells.Cell`, `cells.read`, `own_checks.check_statements`, ...) are what they offer each other, not the
package's interface; a name with a leading underscore is its own module's alone.
"""

from grader.lecture.cells import assigning_line, first_unassigned
from grader.lecture.own_checks import Check, SavedCheck, checks, saved_checks, saved_note
from grader.lecture.recognition import Gradient, Recognised, Section, is_ours, recognise, rubric_for
from grader.lecture.rewrite import DATA_FILES
from grader.lecture.run_plan import FORWARD, OWN, OWN_LEAVES, OWN_PREFIX, own_forward, plan
from grader.lecture.tensors import LEAVES, example_leaves, leaves, warm_up_source

__all__ = [
    "DATA_FILES",
    "FORWARD",
    "LEAVES",
    "OWN",
    "OWN_LEAVES",
    "OWN_PREFIX",
    "Check",
    "Gradient",
    "Recognised",
    "SavedCheck",
    "Section",
    "assigning_line",
    "checks",
    "example_leaves",
    "first_unassigned",
    "is_ours",
    "leaves",
    "own_forward",
    "plan",
    "recognise",
    "rubric_for",
    "saved_checks",
    "saved_note",
    "warm_up_source",
]
