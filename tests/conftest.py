"""Shared fixtures. The grader pins torch's scalar CPU kernels; so must the tests, before torch loads."""

from __future__ import annotations

import os

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
SOLUTION = ROOT / "solutions" / "backprop_ninja.ipynb"
RELEASE = ROOT / "assignments" / "backprop_ninja.ipynb"
LECTURE_NAMES = ROOT.parent / "shared" / "reference" / "names.txt"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def grader_command() -> list[str]:
    """The installed `grader` console script of the environment running the tests."""
    script = Path(sys.executable).parent / "grader"
    return [str(script)] if script.exists() else [sys.executable, "-m", "grader"]


@pytest.fixture(scope="session")
def pool():
    """One warm worker for the whole session (torch imported and the data built once), as a batch has."""
    from grader import grade, rubric, sandbox

    with sandbox.Pool(grade.hidden_folders(rubric.load("backprop_ninja"))) as workers:
        yield workers
