"""The rubric reference page (docs/rubric.md), made from the key tables `grader.rubric` parses with, so that the
page cannot drift from what the grader reads: `python -m grader.rubric_reference > docs/rubric.md`, and a test
compares the page with this module's output."""

from __future__ import annotations

from grader import rubric

HEAD = """\
# Rubric reference

A rubric is `source/NAME/rubric.toml` beside the solution notebook. It holds only choices; what the
notebook already says is read from it (the answer cell of an exercise is the cell whose nbgrader
`grade_id` is the exercise's id, its variables are the `d_` names that cell assigns in the release, the
test cell is the nbgrader test cell after it, the loss is `loss`). Any key not listed here is an error
that `grader validate` names, with the key it most resembles.

This page is generated from the grader's own tables (`python -m grader.rubric_reference`); a test keeps
it in step.

A complete rubric can be this short:

```toml
[[exercise]]
id = "ex1"
```

and a longer one, with a choice of each kind:

```toml
credit = "local"
timeout = 60
forbidden = ["layer_norm"]     # what the exercise asks students to write by hand

[tolerance]
rtol = 1e-5
atol = 1e-7

[variable.d_beta]              # a gradient that is zero up to rounding needs a looser atol
atol = 1e-6

[[hidden_run]]                 # every answer must also be right with these parameters
seed = 20231
batch_size = 5

[[exercise]]
id = "ex1"
```
"""


CLOSE = "How close counts: |answer - autograd| <= atol + rtol × |autograd|."
TRAINING = "For an answer that is a function a training loop calls."


def _table(title: str, keys: dict[str, str], intro: str = "") -> str:
    rows = [f"## {title}", ""]
    if intro:
        rows += [intro, ""]
    rows += ["| key | meaning and default |", "|---|---|"]
    bar = "\\|"  # (a | inside a table cell)
    rows += [f"| `{key}` | {meaning.replace('|', bar)} |" for key, meaning in keys.items()]
    return "\n".join(rows) + "\n"


def page() -> str:
    """The reference page, as Markdown."""
    return "\n".join(
        [
            HEAD,
            _table("Top level", rubric.TOP_KEYS),
            _table(
                "`[tolerance]`",
                rubric.TOLERANCE_KEYS,
                "How close counts: |answer - autograd| <= atol + rtol * |autograd|.",
            ),
            _table("`[[exercise]]`", rubric.EXERCISE_KEYS, "One table per exercise, in notebook order."),
            _table("`[variable.NAME]`", rubric.VARIABLE_KEYS, "One table per variable whose defaults do not fit."),
            _table(
                "`[exercise.training]`", rubric.TRAINING_KEYS, "For an answer that is a function a training loop calls."
            ),
            "## The instructor's private hidden runs\n\n"
            "`COURSE/private/NAME/hidden_runs.toml` holds `[[hidden_run]]` tables too. The instructor's commands add\n"
            "them to the rubric's; nbgrader never releases them (they are outside `source/`), and a student's\n"
            "`grader check` never sees them.\n",
        ]
    )


if __name__ == "__main__":
    print(page(), end="")
