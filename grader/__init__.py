"""Grade hand-written backprop homework (makemore part 4 and friends) safely and explainably.

Students: `from grader import check` and `check("logits", d_logits, logits)` in a notebook.
Instructors: `grader check NOTEBOOK` on the command line, or `grader.grade_notebook(path)`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Pin PyTorch's CPU kernels to the scalar ones before torch is imported anywhere through this package:
# the vectorised tanh backward differs from (1 - h**2) * dh in the last bit, and in a processor-
# dependent way, so `exact` would otherwise mean different things on different machines.
os.environ["ATEN_CPU_CAPABILITY"] = "default"

from grader.assets import names_path

if TYPE_CHECKING:  # (for the type checker only: at run time the names load on first use, below)
    from grader.grade import grade_notebook
    from grader.integrations.selfcheck import check, check_training, check_value

__all__ = ["check", "check_training", "check_value", "grade_notebook", "names_path"]


def __getattr__(name: str) -> object:  # lazy: `grader --help` and friends should not pay for importing torch
    if name in ("check", "check_training", "check_value"):
        from grader.integrations import selfcheck  # (torch: on first use, as the line above says)

        return getattr(selfcheck, name)
    if name == "grade_notebook":
        from grader.grade import grade_notebook  # (nbformat, and torch once it grades: on first use, the same)

        return grade_notebook
    raise AttributeError(name)
