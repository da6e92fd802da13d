"""The class report (class.json, class.html): which mistakes the class made, which wrong answers were
shared; regrading when what grades changed; canvas.csv and late submissions.

The test class is made from the solution (`conftest.answered`): some correct; several with one common
mistake (`d_logprobs` without its 1/n, which makes every gradient below it identical for all of them);
a small group sharing two uncommon wrong answers; others with mistakes of their own, two of whom share
one uncommon answer (one is never enough)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, answered, grader_command

from grader import assets, batch, regrade, submissions
from grader import assignment as assignments
from grader.reports import class_report

RUBRIC = assignments.rubric_of("backprop_ninja")
ASSIGNMENT = assignments.load("backprop_ninja")

COMMON = ("ex1", "d_logprobs[range(n), Yb] = -1.0 / n", "d_logprobs[range(n), Yb] = -1.0")  # factor n, all below follow
SHARED_W2 = ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits * 0.9")
SHARED_BNGAIN = (
    "ex1",
    "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
    "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True) + 0.01",
)
OWN_B2 = ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = d_logits.sum(0) * 1.1")

CLASS = {
    "ok1": (),
    "ok2": (),
    "ok3": (),
    "common1": (COMMON,),
    "common2": (COMMON,),
    "common3": (COMMON,),
    "common4": (COMMON,),
    # the group: the same two odd answers; one of them renamed a variable and added comments
    "group1": (SHARED_W2, SHARED_BNGAIN),
    "group2": (SHARED_W2, SHARED_BNGAIN),
    "group3": (
        (
            "ex1",
            "d_W2 = h.T @ d_logits",
            "# weights of the output layer\nW2_grad = h.T @ d_logits * 0.9\nd_W2 = W2_grad",
        ),
        SHARED_BNGAIN,
    ),
    # their own mistakes; own1 and own2 share one uncommon answer (d_b2), and nothing else
    "own1": (OWN_B2, ("ex1", "d_W1 = embcat.T @ d_hprebn", "d_W1 = embcat.T @ d_hprebn * 2")),
    "own2": (OWN_B2, ("ex2", "d_logits /= n", "d_logits /= n - 1")),
    "own3": (
        COMMON,
        ("ex1", "d_bnbias = d_hpreact.sum(0, keepdim=True)", "d_bnbias = d_hpreact.sum(0, keepdim=True) - 0.5"),
    ),
    "own4": (("ex1", "d_bndiff2 = (1.0 / (n - 1))", "d_bndiff2 = (1.0 / n)"), ("ex3", "n / (n - 1) * bnraw", "bnraw")),
}


def _write_class(folder: Path, students: dict[str, tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for student, edits in students.items():
        nbformat.write(answered("backprop_ninja", edits), str(folder / f"{student}.ipynb"))
    return folder


@pytest.fixture(scope="module")
def warm_pool(pool):
    """The session's pool with its worker started from this (the main) thread. A worker dies with the thread
    that started it (the parent-death signal follows the thread), and `grade_all` grades in threads that end
    with it: a worker they started would be gone for every later test."""
    from grader.grade import grade_with_runs

    grade_with_runs(ROOT / "tests" / "notebooks" / "full_marks.ipynb", pool=pool, hidden_runs=())
    return pool


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory, warm_pool) -> Path:
    """The test class graded into a folder, as `grader grade` does, in the session's warm pool."""
    tmp = tmp_path_factory.mktemp("class-report")
    submitted = _write_class(tmp / "submitted", CLASS)
    found = submissions.discover([submitted], "backprop_ninja", tmp / "scratch")
    out = tmp / "out"
    batch.grade_all(found, "backprop_ninja", out, jobs=2, timeout=60, pool=warm_pool)
    batch.write_outputs(out, "backprop_ninja", found)
    return out


def test_the_common_mistake_comes_first_and_only_the_group_is_named(graded_class):
    data = json.loads((graded_class / "class.json").read_text())
    assert data["students"] == len(CLASS)
    variables = {f"{v['exercise']}/{v['name']}": v for v in data["variables"]}
    commons = ["common1", "common2", "common3", "common4", "own3"]

    first = variables["ex1/d_logprobs"]["mistakes"][0]
    assert first["students"] == commons and "times n (= 32)" in first["hint"]
    # root mistakes only: the gradients below d_logprobs are off for all five, but only because of it
    for name in ("ex1/d_probs", "ex1/d_logits", "ex1/d_W1", "ex1/d_C"):
        assert not any(set(m["students"]) & set(commons) for m in variables[name]["mistakes"]), name
    assert variables["ex1/d_logprobs"]["right"] == pytest.approx(9 / 14)
    assert {s for m in variables["ex1/d_W2"]["mistakes"] for s in m["students"]} == {"group1", "group2", "group3"}
    assert variables["ex1/d_W2"]["mistakes"][0]["hint"].startswith("no hint: off by up to")
    assert variables["ex1/d_b2"]["mistakes"][0]["students"] == ["own1", "own2"]
    assert any("n/(n-1)" in m["hint"] or "(n-1)/n" in m["hint"] for m in variables["ex1/d_bndiff2"]["mistakes"])

    # the group, and nobody else: not the five with the common mistake, not own1 and own2 (one shared answer)
    shared = data["shared_wrong_answers"]
    assert [g["students"] for g in shared] == [["group1", "group2", "group3"]]
    group = shared[0]
    assert group["variables"] == ["ex1/d_W2", "ex1/d_bngain"]
    assert group["rarity"] == pytest.approx((14 / 3) ** 2, rel=0.01)
    # their answer cells are alike beyond the class's usual (names and comments ignored)
    assert group["code_similarity"] > 0.9 and data["code_similarity_typical"] is not None
    assert {r["student"] for r in data["roster"]} == set(CLASS)
    assert data["score"]["max_score"] == 36 and sum(b["students"] for b in data["score"]["histogram"]) == 14


def test_the_class_page_says_what_the_json_says_and_links_each_student(graded_class):
    page = (graded_class / "class.html").read_text()
    assert page.startswith("<!doctype html>") and "http://" not in page and "https://" not in page
    assert "A lead for a conversation, not proof." in page
    assert page.count("src='data:image/png;base64,") + page.count('src="data:image/png;base64,') == 1
    assert '<a href="feedback/group1.html">group1</a>' in page
    for student in CLASS:
        assert (graded_class / "feedback" / f"{student}.html").is_file()
    assert (graded_class / "summary.txt").read_text().endswith("shared answers: class.html\n")


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium here (CI installs Debian's chromium)")
def test_the_class_page_loads_in_a_headless_browser_with_its_picture(graded_class, tmp_path):
    flags = [
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (graded_class / "class.html").as_uri()
    dom = subprocess.run([_browser(), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="loaded"' in dom  # set by the page itself once its picture has decoded
    assert "A lead for a conversation, not proof." in dom and "group1" in dom
    shot = tmp_path / "class.png"
    subprocess.run(
        [_browser(), *flags, f"--screenshot={shot}", "--window-size=1200,2600", page], capture_output=True, timeout=120
    )
    assert shot.read_bytes()[:4] == b"\x89PNG"


def _report(student: str, answers: dict[str, str], hints: dict[str, str] | None = None) -> dict:
    """A report whose root mistakes are `answers` (`exercise/variable` -> digest), with the grader's `hints`."""
    variables = [
        {
            "exercise": k.split("/")[0],
            "name": k.split("/")[1],
            "status": "wrong",
            "local_status": "wrong",
            "hint": (hints or {}).get(k, ""),
            "points": 0,
            "max_points": 1,
        }
        for k in answers
    ]
    return {"student": student, "status": "graded", "variables": variables, "answers": answers}


def _class(size: int, *groups: list[dict]) -> list[dict]:
    """`groups` of reports, and students right in everything up to `size`."""
    reports = [r for g in groups for r in g]
    return reports + [_report(f"ok{i}", {}) for i in range(size - len(reports))]


def test_shared_answers_never_rest_on_common_mistakes_or_a_single_answer():
    six = [_report(f"c{i}", {"ex1/d_a": "aaaa", "ex1/d_b": "bbbb"}) for i in range(6)]  # 30 % of 20: common
    pair = [_report(p, {"ex1/d_a": "xxxx", "ex1/d_c": "yyyy"}) for p in ("p1", "p2")]
    one = [_report(q, {"ex1/d_d": "zzzz"}) for q in ("q1", "q2")]  # one shared answer: not enough
    assert class_report.shared_answers(_class(20, six, pair, one)) == [
        (("p1", "p2"), ("ex1/d_a", "ex1/d_c"), (20 / 2) ** 2)
    ]


def test_a_ring_is_named_by_its_share_of_the_class_not_a_head_count():
    ring = {"ex1/d_W2": "ring-w2", "ex1/d_bngain": "ring-bngain"}  # two odd answers without a hint
    four = [_report(f"r{i}", ring) for i in range(4)]
    assert class_report.shared_answers(_class(20, four)) == [
        (("r0", "r1", "r2", "r3"), ("ex1/d_W2", "ex1/d_bngain"), (20 / 4) ** 2)
    ]
    five = [_report(f"r{i}", ring) for i in range(5)]
    assert class_report.shared_answers(_class(60, five)) == [
        (tuple(f"r{i}" for i in range(5)), ("ex1/d_W2", "ex1/d_bngain"), (60 / 5) ** 2)
    ]
    assert class_report.shared_answers(_class(20, five))[0][0] == tuple(f"r{i}" for i in range(5))  # 25 %: still rare
    # the limit: at most 3 students, or 25 % of the class where that is more
    assert [class_report.common_limit(n) for n in (4, 12, 20, 60)] == [3, 3, 5, 15]


def test_an_unhinted_answer_a_third_of_the_class_gave_is_no_evidence():
    # six of twenty (30 %) gave the same odd d_a; two of them also share an odd d_c: one shared rare answer
    six = [_report(f"c{i}", {"ex1/d_a": "aaaa", **({"ex1/d_c": "cccc"} if i < 2 else {})}) for i in range(6)]
    assert class_report.shared_answers(_class(20, six)) == []


def test_textbook_mistakes_made_alike_are_no_evidence():
    # a and b both forgot the 1/n of d_logprobs and both divided by n instead of n-1 in d_bndiff2: each is a
    # mistake with the grader's hint, made on one's own and identically, however few made it
    hints = {"ex1/d_logprobs": "it is the right gradient times n (= 32)", "ex1/d_bndiff2": "times (n-1)/n"}
    both = [_report(s, {"ex1/d_logprobs": "logprobs-n", "ex1/d_bndiff2": "bndiff2-n"}, hints) for s in ("a", "b")]
    assert class_report.shared_answers(_class(20, both)) == []
    # one hinted shared mistake and one odd one: one piece of evidence, not enough
    mixed = [_report(s, {"ex1/d_logprobs": "logprobs-n", "ex1/d_W2": "odd"}, hints) for s in ("a", "b")]
    assert class_report.shared_answers(_class(20, mixed)) == []
    # the hinted mistakes are still the class's mistakes, listed under their hint
    listed = class_report._variables(RUBRIC, _class(5, both))
    logprobs = next(v for v in listed if (v.exercise, v.name) == ("ex1", "d_logprobs"))
    assert [(m.hint, m.students) for m in logprobs.mistakes] == [(hints["ex1/d_logprobs"], ("a", "b"))]


def test_answers_that_may_be_right_values_are_no_evidence():
    # autograd's gradient is the right one, the same for everyone who used it
    used = [_report(s, {"ex1/d_W2": "right-w2", "ex1/d_b2": "right-b2"}) for s in ("a", "b")]
    for r in used:
        for v in r["variables"]:
            v["status"] = v["local_status"] = "autograd_used"
    assert class_report.shared_answers(_class(20, used)) == []


def test_a_class_of_no_students_has_no_share_right():
    empty = class_report.build(RUBRIC, [])
    data = class_report.to_dict(empty)
    assert data["students"] == 0 and data["variables"] and all(v["right"] is None for v in data["variables"])
    assert data["score"]["median"] is None and not data["shared_wrong_answers"]
    page = class_report.to_html(empty)
    assert "no students" in page and "none graded. The same data" in page


def test_tokens_ignore_whitespace_comments_and_names():
    a = class_report.tokens("d_W2 = h.T @ d_logits  # the output layer\n")
    b = class_report.tokens("grad_w = hidden.T@dl\n")
    assert a == b and class_report.similarity(a, b) == 1.0
    assert class_report.similarity(a, class_report.tokens("d_W2 = d_logits.sum(0)")) < 0.5
    assert class_report.tokens("%matplotlib inline\nx = (") == ["%", "v", "v", "v", "=", "("]  # no parse: words


# --- regrading when what grades changed -----------------------------------------------------------------


def test_reports_are_graded_again_when_the_hidden_runs_or_the_rubric_change(tmp_path, warm_pool, monkeypatch):
    submitted = _write_class(tmp_path / "submitted", {"alice": (), "bob": (SHARED_W2,)})
    found = submissions.discover([submitted], "backprop_ninja", tmp_path / "scratch")
    out = tmp_path / "out"

    def grade(timeout: float = 60, **kwargs) -> dict[str, tuple[bool, str]]:
        outcomes = batch.grade_all(found, "backprop_ninja", out, jobs=2, timeout=timeout, pool=warm_pool, **kwargs)
        return {o.submission.student: (o.reused, o.why) for o in outcomes}

    assert grade() == {"alice": (False, ""), "bob": (False, "")}
    assert grade() == {"alice": (True, ""), "bob": (True, "")}
    other = ({"batch_size": 21},)
    assert grade(hidden_runs=other) == {"alice": (False, "hidden runs changed"), "bob": (False, "hidden runs changed")}
    assert grade(hidden_runs=other) == {"alice": (True, ""), "bob": (True, "")}
    assert grade() == {"alice": (False, "hidden runs changed"), "bob": (False, "hidden runs changed")}
    # a longer time limit grades again (a run that timed out may finish now)
    assert grade(timeout=90) == {"alice": (False, "time limit changed"), "bob": (False, "time limit changed")}
    assert grade() == {"alice": (False, "time limit changed"), "bob": (False, "time limit changed")}

    # a rubric fixed after grading: d_W2 worth two points (in Exercises 1 and 4); comments alone change nothing
    copy = tmp_path / "assignments"
    shutil.copytree(assets.assignments_dir(), copy)
    toml = copy / "backprop_ninja.toml"
    monkeypatch.setattr(assets, "assignments_dir", lambda: copy)
    toml.write_text(toml.read_text() + "\n# a comment\n")
    assert grade() == {"alice": (True, ""), "bob": (True, "")}
    toml.write_text(toml.read_text() + "\n[variable.d_W2]\npoints = 2\n")
    assert grade() == {"alice": (False, "rubric changed"), "bob": (False, "rubric changed")}
    report = json.loads((out / "reports" / "alice.json").read_text())
    assert report["max_score"] == 38 and report["inputs"]["rubric"] and report["inputs"]["grader"]
    assert grade(force=True) == {"alice": (False, "--force"), "bob": (False, "--force")}


def test_the_time_limit_and_the_memory_cap_are_inputs_of_a_grade():
    import dataclasses

    from grader import sandbox

    given = regrade.grading_inputs(ASSIGNMENT)
    assert given["timeout"] == f"{RUBRIC.timeout:g}" and given["memory"] == f"{sandbox.DEFAULT_LIMITS.memory / 2**20:g}"
    assert regrade.grading_inputs(ASSIGNMENT, timeout=RUBRIC.timeout) == given  # the rubric's, said or not
    s = batch.Submission("amy", Path("amy.ipynb"), "d1")
    kept = {"sha256": "d1", "inputs": given}
    longer = regrade.grading_inputs(ASSIGNMENT, timeout=RUBRIC.timeout * 2)
    assert regrade.regrade_reason(kept, s, longer) == "time limit changed"
    more = regrade.grading_inputs(ASSIGNMENT, limits=dataclasses.replace(sandbox.DEFAULT_LIMITS, memory=4096 * 2**20))
    assert more["memory"] == "4096" and regrade.regrade_reason(kept, s, more) == "memory limit changed"


def test_the_grader_input_follows_its_templates_and_torch(tmp_path):
    import torch

    package = tmp_path / "grader"
    (package / "templates").mkdir(parents=True)
    (package / "grade.py").write_text("x = 1\n")
    (package / "templates" / "feedback.html").write_text("<p>{{ x }}</p>\n")
    before = regrade.code_digest(package)
    (package / "templates" / "feedback.html").write_text("<p>{{ x }}!</p>\n")
    after = regrade.code_digest(package)
    assert after != before
    (package / "notes.txt").write_text("not code\n")  # only code and templates count
    assert regrade.code_digest(package) == after
    inputs = regrade.grading_inputs(ASSIGNMENT)
    assert inputs["torch"] == torch.__version__
    s = batch.Submission("amy", Path("amy.ipynb"), "d1")
    assert (
        regrade.regrade_reason({"sha256": "d1", "inputs": {**inputs, "torch": "1.0.0"}}, s, inputs) == "PyTorch changed"
    )


def test_regrade_reasons_name_every_input_that_changed():
    s = batch.Submission("amy", Path("amy.ipynb"), "d1")
    inputs = {
        "rubric": "r",
        "released": "n",
        "solution": "",
        "hidden_runs": "h",
        "data": "d",
        "timeout": "60",
        "memory": "2048",
        "grader": "0.1.0+abc",
    }
    kept = {"sha256": "d1", "inputs": dict(inputs)}
    assert regrade.regrade_reason(kept, s, inputs) is None
    assert regrade.regrade_reason(None, s, inputs) == ""
    assert regrade.regrade_reason({**kept, "sha256": "d0"}, s, inputs) == "submission changed"
    assert regrade.regrade_reason({"sha256": "d1"}, s, inputs) == "its report does not say what graded it"
    changed = {**inputs, "data": "d2", "grader": "0.2.0+def", "released": "n2"}
    assert regrade.regrade_reason(kept, s, changed) == "released notebook, data and grader changed"


def _outcomes() -> list:
    report = {"score": 36.0, "max_score": 36.0}
    why = ["rubric changed"] * 3 + ["time limit, memory limit and grader changed", "", "--force"]
    return [
        batch.Outcome(batch.Submission(f"s{i}", Path(f"s{i}.ipynb"), "d"), report, reused=i == 4, why=w)
        for i, w in enumerate(why)
    ]


def test_progress_ends_with_each_reason_for_grading_again_and_its_count(capsys):
    from grader.cli import _Progress

    progress = _Progress(6)
    for outcome in _outcomes():
        progress(outcome)
    progress.finish()
    lines = capsys.readouterr().err.splitlines()
    # one line per submission as before (what logs and tests read), then the reasons, most common first
    assert lines[:6] == [
        "[1/6] s0: 36/36 (graded again: rubric changed)",
        "[2/6] s1: 36/36 (graded again: rubric changed)",
        "[3/6] s2: 36/36 (graded again: rubric changed)",
        "[4/6] s3: 36/36 (graded again: time limit, memory limit and grader changed)",
        "[5/6] s4: 36/36 (kept)",
        "[6/6] s5: 36/36 (graded again: --force)",
    ]
    assert lines[6:] == [
        "graded again: rubric changed (3)",
        "graded again: --force (1)",
        "graded again: time limit, memory limit and grader changed (1)",
    ]


def test_on_a_terminal_the_bar_stays_and_the_reasons_follow_it_in_full(monkeypatch):
    from grader import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", terminal)
    progress = cli._Progress(6)
    for outcome in _outcomes():
        progress(outcome)
    progress.finish()
    shown = terminal.getvalue()
    assert "6/6" in shown and "[1/6]" not in shown  # the bar, not the lines
    assert shown.endswith(
        "graded again: rubric changed (3)\ngraded again: --force (1)\n"
        "graded again: time limit, memory limit and grader changed (1)\n"
    )


# --- back to the LMS ------------------------------------------------------------------------------------


def test_canvas_csv_has_the_gradebook_import_layout():
    subs = [
        batch.Submission("doejane", Path("a"), "1", canvas_id="2222", late=True),
        batch.Submission("smithjohn", Path("b"), "2", canvas_id="12345"),
        batch.Submission("local", Path("c"), "3"),
    ]
    reports = [
        {"student": "doejane", "score": 35.0},
        {"student": "smithjohn", "score": 36.0},
        {"student": "local", "score": 1.0},
    ]
    rows = list(csv.reader(io.StringIO(batch.canvas_csv(subs, reports, "Backprop ninja (4411)"))))
    assert rows == [
        ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Backprop ninja (4411)"],
        ["doejane", "2222", "", "", "", "35"],
        ["smithjohn", "12345", "", "", "", "36"],
    ]


def test_canvas_names_keep_their_user_ids_and_late_flags(tmp_path):
    download = tmp_path / "submissions.zip"
    with zipfile.ZipFile(download, "w") as zf:
        for name in (
            "smithjohn_12345_67890_backprop_ninja.ipynb",
            "smithjohn_LATE_777_888_backprop_ninja.ipynb",
            "doejane_2222_3333_backprop_ninja-1.ipynb",
        ):
            zf.writestr(name, "{}")
    (tmp_path / "scratch").mkdir()
    found = submissions.discover([download], "backprop_ninja", tmp_path / "scratch")
    # two students named alike are two students, told apart by their Canvas user ids
    assert [(s.student, s.canvas_id, s.late) for s in found.submissions] == [
        ("doejane", "2222", False),
        ("smithjohn_12345", "12345", False),
        ("smithjohn_777", "777", True),
    ]
    assert found.problems == ()


def test_without_canvas_assignment_a_canvas_download_gets_a_note_on_its_column(tmp_path):
    download = tmp_path / "submissions.zip"
    with zipfile.ZipFile(download, "w") as zf:  # (not a notebook: a failed report, no run needed)
        zf.writestr("smithjohn_12345_67890_backprop_ninja.ipynb", "{}")
    command = [*grader_command(), "grade", str(download), "--assignment", "backprop_ninja", "--jobs", "1"]
    done = subprocess.run([*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [note] = [line for line in done.stderr.splitlines() if "canvas.csv" in line]
    assert (
        note.startswith("note: canvas.csv's score column is named 'backprop_ninja'") and "--canvas-assignment" in note
    )
    assert (tmp_path / "out" / "canvas.csv").read_text().splitlines()[0].endswith(",backprop_ninja")
    named = subprocess.run(
        [*command, "--out", str(tmp_path / "named"), "--canvas-assignment", "Backprop ninja (4411)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert named.returncode == 0 and "canvas.csv" not in named.stderr, named.stderr


@pytest.mark.slow
def test_grade_from_a_canvas_download_writes_canvas_csv_flags_late_and_regrades_on_new_hidden_runs(tmp_path):
    download = tmp_path / "submissions.zip"
    with zipfile.ZipFile(download, "w") as zf:
        zf.writestr("smithjohn_12345_67890_backprop_ninja.ipynb", nbformat.writes(answered("backprop_ninja")))
        zf.writestr(
            "doejane_LATE_2222_3333_backprop_ninja-1.ipynb", nbformat.writes(answered("backprop_ninja", (SHARED_W2,)))
        )
    hidden = tmp_path / "hidden.toml"
    hidden.write_text("[[hidden_run]]\nbatch_size = 23\n")
    out = tmp_path / "out"

    def grade(*extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [
                *grader_command(),
                "grade",
                str(download),
                "--assignment",
                "backprop_ninja",
                "--out",
                str(out),
                "--jobs",
                "2",
                "--timeout",
                "30",
                "--canvas-assignment",
                "Backprop ninja (4411)",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done

    first = grade()
    assert "class.html" in first.stdout and "canvas.csv" in first.stdout
    rows = list(csv.reader(io.StringIO((out / "canvas.csv").read_text())))
    assert rows == [
        ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Backprop ninja (4411)"],
        ["doejane", "2222", "", "", "", "35"],
        ["smithjohn", "12345", "", "", "", "36"],
    ]
    grades = {r["student"]: r for r in csv.DictReader(io.StringIO((out / "grades.csv").read_text()))}
    assert grades["doejane"]["late"] == "yes" and grades["smithjohn"]["late"] == ""
    assert json.loads((out / "class.json").read_text())["students"] == 2

    again = grade("--hidden-runs", str(hidden))
    assert again.stderr.count("(graded again: hidden runs") == 2, again.stderr  # (and "grader" if its code changed)
    assert grade("--hidden-runs", str(hidden)).stderr.count("(kept)") == 2
