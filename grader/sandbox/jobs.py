"""A plan as a worker reads it, and where a run of it can start from the worker's warm state.

Guarantees: a run starts after the worker's cells only where its plan begins with exactly those cells (the
parameters cell aside, which is then run again); anything else runs from the first cell.

Portable: nothing here may use an API that macOS or Windows lacks (`tests/test_portability.py` checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports this module too, and must not pay for nbformat's import (a second)
    from grader.plan import Plan, PlannedCell


def plain(cells: tuple[PlannedCell, ...] | list[PlannedCell]) -> list[dict]:
    """Planned cells as the worker reads them (JSON)."""
    return [{"source": c.source, "no_grad": c.no_grad, "guarded": c.guarded} for c in cells]


def warm_start(plan: Plan, prefix: tuple[PlannedCell, ...]) -> tuple[int, list[int]]:
    """Where a run of `plan` can start from the worker's state: (first position to run, parameter cells to re-run).

    Only where the plan begins with exactly the worker's cells (the released parameters cell and the
    setup cells, byte for byte); the injected parameters may differ, and are then run again.
    """
    from grader.plan import PARAMS  # (not at the top: grader.plan imports nbformat, which the worker must not pay for)

    if len(plan.cells) < len(prefix):
        return 0, []
    preamble = []
    for i, (ours, theirs) in enumerate(zip(plan.cells, prefix)):
        if ours.grade_id == theirs.grade_id == PARAMS:
            if ours.source != theirs.source:
                preamble.append(i)
        elif (ours.source, ours.no_grad, ours.guarded) != (theirs.source, theirs.no_grad, theirs.guarded):
            return 0, []
    return len(prefix), preamble
