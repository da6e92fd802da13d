"""The grader's exceptions.

Student mistakes are never exceptions: they become results in the report. These are for input the
grader cannot grade at all (usage errors, a file that is not a notebook, an unknown assignment)
and for problems on the instructor's side (a broken rubric, a grader bug).
"""

from __future__ import annotations


class GraderError(Exception):
    """Base class: the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 1


class NotANotebook(GraderError):
    """The input file is missing or is not a readable Jupyter notebook."""


class UnknownAssignment(GraderError):
    """The notebook does not say which assignment it is, or names one the grader does not have."""


class RubricError(GraderError):
    """An assignment's rubric or released notebook is inconsistent (an instructor-side bug)."""


class BrokenAssignment(RubricError):
    """An assignment whose rubric names what its notebooks do not have, or holds an unknown key: the author's to
    fix. `problems` lists each, one sentence naming the key and what exists."""

    def __init__(self, message: str, problems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.problems = problems


class SandboxError(GraderError):
    """The grader could not start the child process at all (not the student's fault)."""


class UsageError(GraderError):
    """The command line or its environment asks for something that does not exist (exit code 2)."""

    exit_code = 2
