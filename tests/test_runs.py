"""The typed boundary between a run and the grader: value keys and their one text form, and a backend's report."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from grader.runs import CallArgument, CallRaised, CallReturned, CallWeight, unwire, wire
from grader.sandbox.results import Ended

KEYS = [
    ("ex1", "d_logprobs"),
    ("#forward", "_grader_own_h"),
    CallArgument("ex4", 0, 1),
    CallArgument("ex4", 12, 0),
    CallWeight("ex4", 3, 7),
    CallReturned("ex4", 0, "d_W1"),
    CallReturned("ex4", 2, "arg0"),  # a rubric variable may be called that: it is not an argument
    CallReturned("ex4", 2, "param1"),
    CallRaised("ex4", 1),
]


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_every_key_comes_back_as_itself(key):
    assert unwire(wire(key)) == key


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ex1",
        "/d_x",
        "ex1/",
        "ex1/0/",
        "ex1/x/d_W1",  # a call that is not a number
        "ex1/-1/d_W1",
        "ex1/01/d_W1",  # not as wire writes it
        "ex1/\u0661/d_W1",  # an Arabic-Indic one: a digit to str.isdigit, not to wire
        "ex1/0/!arg",
        "ex1/0/!arg01",
        "ex1/0/!arg-1",
        "ex1/0/!argx",
        "ex1/0/!param 1",
        "ex1/0/!err",
        "ex1/0/not an identifier",
        "ex1/0/d_W1/more",
        "ex1/99999999999/d_W1",  # more calls than any run makes
        None,
        3,
        ["ex1", "d_x"],
    ],
)
def test_a_name_wire_does_not_make_is_no_key(name):
    # the result file is written next to student code: any name may be in it
    assert unwire(name) is None


def test_no_grader_module_builds_or_parses_a_value_name_itself():
    """The text form of a run's value keys is made and read in `grader/runs.py` only (`wire`, `unwire`)."""
    pattern = re.compile(r"""/arg|/param|!error|!arg|!param|\.partition\(["']/["']\)""")
    grader = pathlib.Path(__file__).parents[1] / "grader"
    found = [
        f"{path.relative_to(grader.parent)}:{n}: {line.strip()}"
        for path in sorted(grader.rglob("*.py"))
        if path.name != "runs.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "value names built or taken apart outside grader/runs.py:\n" + "\n".join(found)


def test_a_supervisors_report_is_checked_field_by_field():
    ended = Ended.from_json(
        json.loads(
            '{"returncode": -9, "timed_out": true, "stray": 2, "max_rss_kb": 2048.0, "seconds": 1.5,'
            ' "sandbox_error": "", "stamps": {"forked": 1.25, "bad": "x"}}'
        )
    )
    assert ended == Ended(
        returncode=-9, timed_out=True, stray=2, max_rss_kb=2048, seconds=1.5, stamps=(("forked", 1.25),)
    )
    assert ended.limited()


@pytest.mark.parametrize(
    "data",
    [
        {"returncode": "0", "timed_out": "yes", "stray": [1], "max_rss_kb": None, "stamps": [1, 2]},
        {"returncode": True, "timed_out": 1, "seconds": {"a": 1}, "sandbox_error": None},
        {},
    ],
)
def test_a_report_of_the_wrong_types_reads_as_an_unclean_end_with_nothing_else(data):
    ended = Ended.from_json(data)
    assert ended is not None
    assert ended.returncode == 1  # no exit code read: not a clean exit
    assert (ended.timed_out, ended.stray, ended.max_rss_kb, ended.stamps, ended.sandbox_error) == (False, 0, 0, (), "")


@pytest.mark.parametrize("data", [None, [], "report", 3])
def test_a_report_that_is_not_an_object_is_none(data):
    assert Ended.from_json(data) is None
