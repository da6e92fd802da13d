"""A `Report` as JUnit XML (`grader check --junit FILE`), for CI systems that read test results.

The same shape `pytest --grade NOTEBOOK --junitxml FILE` writes: one `testsuite` per notebook, one
`testcase` per graded variable (`classname` the notebook's file name and the exercise, `name` the variable)
with its points as properties and, when it does not earn them all, a `failure` whose message is the variable's message
and hint; one testcase per hidden re-run.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from grader.verdicts import PASSING

if TYPE_CHECKING:
    from grader.verdicts import Report, VariableResult


def _case(suite: ET.Element, classname: str, name: str, properties: list[tuple[str, str]], failure: str) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if properties:
        props = ET.SubElement(case, "properties")
        for key, value in properties:
            ET.SubElement(props, "property", name=key, value=value)
    if failure:
        ET.SubElement(case, "failure", message=failure).text = failure


def variable_failure(v: VariableResult) -> str:
    """Why a report's variable fails as a test (it does not earn all its points), or "" when it passes."""
    if v.points >= v.max_points:
        return ""
    return f"{v.status}: {v.message}" if v.message else v.status


def run_failure(report: Report, index: int) -> str:
    """Why hidden run `index` (from 1) fails as a test, or "" when it passes: it must run to the end, and every
    variable right with the notebook's parameters must be right in it too (a variable wrong everywhere fails
    its own test; this one is about the parameters)."""
    run = report.runs[index] if index < len(report.runs) else None
    if run is None:
        return f"hidden run {index} did not take place"
    if run.status != "graded":
        return f"hidden run {index} did not run to the end"
    if not any(v.runs and v.runs[0] in PASSING for v in report.variables):
        return f"nothing to re-check in hidden run {index}: no variable is right with the notebook's parameters yet"
    only_here = [
        v.name
        for v in report.variables
        if len(v.runs) > index and v.runs[0] in PASSING and v.runs[index] not in PASSING
    ]
    if only_here:
        return (
            f"right with the notebook's parameters but not in hidden run {index} (other parameters): "
            f"{', '.join(only_here)}"
        )
    return ""


def ungradable(notebook: str, reason: str) -> str:
    """The JUnit XML of a notebook that could not be graded at all: one failing testcase with the reason."""
    root = ET.Element("testsuites", name="grader", tests="1", failures="1", errors="0", time="0.000")
    suite = ET.SubElement(
        root, "testsuite", name=Path(notebook).name, tests="1", failures="1", errors="0", skipped="0", time="0.000"
    )
    _case(suite, Path(notebook).name, "notebook", [], reason)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_junit(report: Report, seconds: float = 0.0) -> str:
    """The report as a JUnit XML document (a string)."""
    # classnames as pytest's --junitxml writes them for `pytest --grade NOTEBOOK`: `<notebook file>.<exercise>`
    prefix = Path(report.notebook).name + "."
    root = ET.Element("testsuites", name="grader")
    suite = ET.SubElement(root, "testsuite", name=report.assignment)
    failures = 0
    for v in report.variables:
        failure = variable_failure(v)
        failures += bool(failure)
        _case(
            suite,
            prefix + v.exercise,
            v.name,
            [("points", f"{v.points:g}"), ("max_points", f"{v.max_points:g}"), ("status", v.status)],
            failure,
        )
    for i in range(1, len(report.runs)):
        failure = run_failure(report, i)
        failures += bool(failure)
        _case(suite, prefix + "hidden", f"run-{i}", [], failure)
    tests = len(suite)
    suite.attrib.update(tests=str(tests), failures=str(failures), errors="0", skipped="0", time=f"{seconds:.3f}")
    root.attrib.update(tests=str(tests), failures=str(failures), errors="0", time=f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
