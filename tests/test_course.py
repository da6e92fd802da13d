"""An instructor's own assignment in a course folder: `grader new`, `release`, `validate`, and grading it from
the course, from an assignment folder, and from the copy a student's release carries."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import answered_in_course, grader_command, linux_sandbox, user_pytest

from grader import assignment as assignments
from grader import course as courses
from grader import embedded, skeleton, validate
from grader.errors import RubricError, UnknownAssignment, UsageError
from grader.grade import grade_notebook
from grader.reports import validation

pytest.importorskip("nbgrader")  # (grader release runs nbgrader generate_assignment)

NAME = "tiny_layer"


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course folder with one assignment, as `grader new` writes it (released too)."""
    folder = tmp_path_factory.mktemp("course")
    skeleton.write(NAME, folder)
    return folder


def _answered(course: Path, old: str = "", new: str = "") -> nbformat.NotebookNode:
    return answered_in_course(course, NAME, old, new)


def _copy_course(course: Path, tmp_path: Path) -> Path:
    mine = tmp_path / "course"
    shutil.copytree(course, mine)
    return mine


def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != courses.ENVIRONMENT} | (env or {})
    return subprocess.run(
        [*grader_command(), *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=environment
    )


def test_new_writes_an_nbgrader_course_that_validates_as_written(course):
    source = course / "source" / NAME
    assert sorted(p.name for p in source.iterdir()) == sorted([f"{NAME}.ipynb", "rubric.toml"])
    release = nbformat.read(course / "release" / NAME / f"{NAME}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in release.cells if c.cell_type == "code")
    assert "### BEGIN SOLUTION" not in json.dumps(release)  # nbgrader took the answers out
    graded = assignments.load(NAME, course)
    ex = graded.rubric.exercises[0]  # what the rubric leaves out, read from the notebook
    assert [v.name for v in ex.variables] == ["d_diff", "d_a", "d_h", "d_W", "d_b"]
    assert ex.test_cell == "check_ex1" and "autograd" in graded.rubric.skip_cells
    assert graded.rubric.reference_cells == ("setup", "forward")
    result = validate.validate(courses.in_course(course, NAME), seeds=3)
    assert result.errors == () and result.exit_code() == 0, validation.to_text(result)
    assert result.stats["derived"] > 15 and result.stats["caught"] > 10
    caught = {m.name: m for m in result.mistakes}
    sign = next(m for name, m in caught.items() if name.startswith("d_W: sign flipped"))
    assert sign.verdict == "caught" and sign.cost == ("d_W",) and "sign" in sign.hint


def test_the_solution_earns_full_marks_the_release_nothing_and_one_mistake_one_variable(course, tmp_path):
    full = tmp_path / "full" / f"{NAME}.ipynb"
    full.parent.mkdir()
    nbformat.write(_answered(course), full)
    report = grade_notebook(full, course=course)
    assert report.score == report.max_score == 5 and len(report.runs) == 2
    assert grade_notebook(course / "release" / NAME / f"{NAME}.ipynb", course=course).score == 0
    wrong = tmp_path / "wrong" / f"{NAME}.ipynb"
    wrong.parent.mkdir()
    nbformat.write(_answered(course, "d_W = x.T @ d_h", "d_W = -(x.T @ d_h)"), wrong)
    report = grade_notebook(wrong, course=course)
    assert [v.name for v in report.variables if v.points < v.max_points] == ["d_W"]


def test_a_name_is_looked_up_never_followed_as_a_path(course, tmp_path):
    for bad in ("../etc", "/etc/passwd", "a/b", "~root", "", "x y"):
        with pytest.raises(UsageError, match="not an assignment name"):
            courses.locate(bad, course)
    nb = _answered(course)
    nb.metadata["grader"]["assignment"] = "../../source/" + NAME
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(UnknownAssignment, match="does not have"):
        grade_notebook(path, course=course)
    with pytest.raises(UnknownAssignment, match="--course DIR"):  # not in the shipped ones: say where to look
        assignments.load(NAME)


def test_a_course_assignment_shadows_a_shipped_one_of_the_same_name(course, tmp_path):
    mine = _copy_course(course, tmp_path)
    shutil.copytree(mine / "source" / NAME, mine / "source" / "backprop_ninja")
    found = courses.locate("backprop_ninja", mine)
    assert found.origin == "course" and found.source == mine / "source" / "backprop_ninja"
    assert courses.locate("backprop_ninja", None).origin == "shipped"


def _broken(course: Path, tmp_path: Path, rubric: str) -> Path:
    mine = _copy_course(course, tmp_path)
    (mine / "source" / NAME / "rubric.toml").write_text(rubric, encoding="utf-8")
    return mine


def test_an_unknown_rubric_key_fails_validate_and_check_blames_the_assignment(course, tmp_path):
    mine = _broken(course, tmp_path, 'credits = "chain"\n\n[[exercise]]\nid = "ex1"\n')
    result = validate.validate(courses.in_course(mine, NAME))
    assert result.exit_code() == 1
    assert "unknown key 'credits'" in result.errors[0] and "did you mean 'credit'" in result.errors[0]
    proc = _run("validate", NAME, "--course", str(mine))
    assert proc.returncode == 1 and "unknown key 'credits'" in proc.stdout
    nbformat.write(_answered(course), tmp_path / "hand_in.ipynb")
    proc = _run("check", str(tmp_path / "hand_in.ipynb"), "--course", str(mine))
    assert proc.returncode == 1
    assert f"assignment {NAME} is broken, not the notebook being graded" in proc.stderr
    assert "unknown key 'credits'" in proc.stderr


def test_an_exercise_without_its_answer_cell_fails_validate_and_check_blames_the_assignment(course, tmp_path):
    mine = _broken(course, tmp_path, '[[exercise]]\nid = "ex1"\n\n[[exercise]]\nid = "ex2"\ntest_cell = "check_ex2"\n')
    result = validate.validate(courses.in_course(mine, NAME))
    assert result.exit_code() == 1
    assert "exercise 'ex2': no answer cell 'ex2' (the answer cells: ex1)" in result.errors[0]
    with pytest.raises(RubricError, match="is broken, not the notebook being graded"):
        assignments.load(NAME, mine)
    nbformat.write(_answered(course), tmp_path / "hand_in.ipynb")
    proc = _run("check", str(tmp_path / "hand_in.ipynb"), "--course", str(mine))
    assert proc.returncode == 1 and "no answer cell 'ex2'" in proc.stderr and "was it deleted" not in proc.stderr


def _comparable(report: dict) -> dict:
    out = copy.deepcopy(report)
    out.pop("notebook")
    out.pop("peak_memory_mb")  # (a measurement, not a verdict)
    out["notes"] = [n for n in out["notes"] if "copy of the assignment this notebook carries" not in n]
    return out


def test_a_students_copy_alone_gets_the_report_the_instructor_gets(course, tmp_path):
    nb = _answered(course, "d_b = d_h.sum(0)", "d_b = d_h.sum(0, keepdim=True)")
    alone = tmp_path / "alone"  # an empty folder, no course, no environment variable
    alone.mkdir()
    nbformat.write(nb, alone / f"{NAME}.ipynb")
    student = _run("check", f"{NAME}.ipynb", "--json", cwd=alone)
    instructor = _run("check", str(alone / f"{NAME}.ipynb"), "--json", "--course", str(course))
    assert student.returncode == instructor.returncode == 0, student.stderr + instructor.stderr
    mine, theirs = json.loads(student.stdout), json.loads(instructor.stdout)
    assert any("copy of the assignment this notebook carries" in n for n in mine["notes"])
    assert _comparable(mine) == _comparable(theirs)
    assert mine["score"] == 4
    # grade, the instructor's batch, never reads what a submission carries
    proc = _run("grade", str(alone), "--assignment", NAME, "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "unknown assignment" in proc.stderr


def test_a_students_copy_with_an_edited_locked_cell_is_not_checked_against_a_guess(course, tmp_path):
    nb = _answered(course)
    forward = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "forward")
    forward.source = forward.source.replace("(diff**2).mean()", "(diff**2).sum()")
    nbformat.write(nb, tmp_path / f"{NAME}.ipynb")
    with pytest.raises(UnknownAssignment, match="locked cell 'forward' was edited"):
        embedded.load(nb, tmp_path / f"{NAME}.ipynb")
    proc = _run("check", f"{NAME}.ipynb", cwd=tmp_path)
    assert proc.returncode == 1 and "'forward' was edited" in proc.stderr


def test_the_instructors_private_hidden_runs_are_read_from_the_course_and_never_released(course, tmp_path):
    mine = _copy_course(course, tmp_path)
    private = mine / "private" / NAME / "hidden_runs.toml"
    private.parent.mkdir(parents=True)
    private.write_text("[[hidden_run]]\nseed = 99\nbatch_size = 3\n", encoding="utf-8")
    graded = assignments.load(NAME, mine)
    assert graded.rubric.hidden_runs[-1] == {"seed": 99, "batch_size": 3} and len(graded.rubric.hidden_runs) == 2
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(_answered(course), path)
    assert len(grade_notebook(path, course=mine).runs) == 3
    released = nbformat.read(mine / "release" / NAME / f"{NAME}.ipynb", as_version=4)
    assert "99" not in json.dumps(released.metadata["grader"]["release"]["rubric"])


def test_a_mistake_the_author_writes_is_checked_for_its_variable_and_hint_word(course, tmp_path):
    mine = _copy_course(course, tmp_path)
    folder = mine / "source" / NAME / "mistakes"
    folder.mkdir()
    solution = nbformat.read(mine / "source" / NAME / f"{NAME}.ipynb", as_version=4)
    for cell in solution.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = cell.source.replace("d_W = x.T @ d_h", "d_W = d_h.T @ x")
    solution.metadata["grader"]["mistake"] = {"variable": "d_W", "hint": "transposed"}
    nbformat.write(solution, folder / "transposed_d_W.ipynb")
    result = validate.validate(courses.in_course(mine, NAME), seeds=2)
    written = [m for m in result.mistakes if m.kind == "written"]
    assert [(m.name, m.expected, m.cost, m.verdict) for m in written] == [
        ("transposed_d_W.ipynb", "d_W", ("d_W",), "caught")
    ]
    # nothing of the source folder but the solution and the data reaches the release (the mistakes never)
    release = (mine / "release" / NAME).iterdir()
    assert sorted(p.name for p in release) == [f"{NAME}.ipynb"]


@pytest.mark.skipif(not linux_sandbox(), reason="hiding folders from a run needs the Linux sandbox")
def test_no_run_reads_the_solution_even_when_the_grader_starts_in_the_course_folder(course, tmp_path):
    nb = _answered(course)
    spy = nbformat.v4.new_code_cell(
        f"try:\n    leaked = open({str(course / 'source' / NAME / (NAME + '.ipynb'))!r}).read()\n"
        "except OSError as e:\n    leaked = ''\nraise RuntimeError('LEAK' if 'BEGIN SOLUTION' in leaked else 'HIDDEN')"
    )
    nb.cells.append(spy)
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(nb, path)
    proc = _run("check", str(path), "--json", "--course", ".", cwd=course)
    assert proc.returncode == 0, proc.stderr
    assert "LEAK" not in proc.stdout and "HIDDEN" in proc.stdout  # (the spy ran, and found nothing)


def test_a_class_is_graded_from_the_course_and_from_the_assignments_folder(course, tmp_path):
    submitted = tmp_path / "submitted"
    for student, nb in {"ada": _answered(course), "ben": _answered(course, "d_a = d_diff", "d_a = 2 * d_diff")}.items():
        (submitted / student / NAME).mkdir(parents=True)  # (nbgrader's layout: submitted/STUDENT/NAME/)
        nbformat.write(nb, submitted / student / NAME / f"{NAME}.ipynb")
    proc = _run(
        "grade",
        str(submitted),
        "--assignment",
        NAME,
        "--out",
        str(tmp_path / "out"),
        env={
            courses.ENVIRONMENT: str(course)  # (the environment variable, as an instructor's shell sets it)
        },
    )
    assert proc.returncode == 0, proc.stderr
    grades = (tmp_path / "out" / "grades.csv").read_text(encoding="utf-8")
    assert "ada" in grades and "ben" in grades
    folder = course / "source" / NAME  # --assignment DIR: the course's own folder, no --course needed
    proc = _run("check", str(submitted / "ben" / NAME / f"{NAME}.ipynb"), "--json", "--assignment", str(folder))
    report = json.loads(proc.stdout)
    assert report["score"] == 4 and [v["name"] for v in report["variables"] if v["points"] == 0] == ["d_a"]


def test_a_dask_task_carries_a_course_assignment_to_a_worker_without_the_course(course, tmp_path):
    from dataclasses import asdict

    from grader import sandbox
    from grader.integrations import cluster

    graded = assignments.load(NAME, course)
    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(_answered(course, "d_b = d_h.sum(0)", "d_b = d_h.sum(1)"), path)
    carried = tuple((k, p.read_bytes()) for k, p in assignments.folder_files(graded).items())
    assert not any("solution" in k for k, _ in carried)  # (no values exercise reads it)
    task = cluster.Task(
        "ada",
        str(path),
        path.read_bytes(),
        "x",
        NAME,
        graded.digest,
        None,
        asdict(sandbox.DEFAULT_LIMITS),
        carried=carried,
    )
    try:
        report, _ = cluster.grade_task(task)  # as a worker runs it: nothing of the course is read
        assert report["score"] == 4 and report["notebook"] == str(path)
        with pytest.raises(RubricError, match="differs from the grader's"):
            cluster.grade_task(dataclasses_replace(task, assignment_digest="0" * 64))
    finally:  # (a worker keeps its pool for life; this process is not a worker)
        cluster.close_pools()


def dataclasses_replace(task, **changes):
    import dataclasses

    return dataclasses.replace(task, **changes)


def test_pytest_grades_a_course_notebook_with_grade_course(course, tmp_path):

    path = tmp_path / f"{NAME}.ipynb"
    nbformat.write(_answered(course, "d_W = x.T @ d_h", "d_W = x.T @ d_h * 2"), path)
    proc = user_pytest(tmp_path, "-q", "--grade", str(path), "--grade-course", str(course))
    assert "1 failed, 5 passed" in proc.stdout, proc.stdout[-2000:]
    assert "d_W" in proc.stdout and "times 2" in proc.stdout


@pytest.mark.slow
def test_nbgrader_releases_and_grader_gradebook_grades_the_courses_own_assignment(course, tmp_path):
    import sys

    from nbgrader.api import Gradebook

    mine = _copy_course(course, tmp_path)
    assert (mine / "nbgrader_config.py").is_file()  # (grader new wrote the course's nbgrader settings)
    (mine / "source" / NAME / "mistakes").mkdir()
    nbformat.write(_answered(course), mine / "source" / NAME / "mistakes" / "any.ipynb")
    env = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", NAME, "--force"],
        cwd=mine,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (mine / "release" / NAME / "mistakes").exists()  # the author's mistakes are never released
    for student, nb in {
        "ada": _answered(course),
        "ben": _answered(course, "d_h = (1 - a**2) * d_a", "d_h = (1 - a) * d_a"),
    }.items():
        (mine / "submitted" / student / NAME).mkdir(parents=True)
        nbformat.write(nb, mine / "submitted" / student / NAME / f"{NAME}.ipynb")
    proc = _run("gradebook", str(mine), NAME)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Gradebook(f"sqlite:///{mine / 'gradebook.db'}") as gb:
        scores = {s: gb.find_grade("check_ex1", NAME, NAME, s).score for s in ("ada", "ben")}
    assert scores == {"ada": 5, "ben": 4}


def test_validate_names_every_author_slip_where_it_is(course, tmp_path):
    mine = _broken(
        course, tmp_path, 'credt = "local"\n\n[variable.d_w]\natol = 1e-6\n\n[[exercise]]\nid = "ex1"\nrtoll = 1\n'
    )
    result = validate.validate(courses.in_course(mine, NAME))
    text = " ".join(result.errors)
    assert "unknown key 'credt' at the top level; did you mean 'credit'?" in text
    assert "unknown key 'rtoll' in exercise 'ex1'; did you mean 'rtol'?" in text  # every one, not the first
    mine = _broken(course, tmp_path / "b", '[variable.d_w]\natol = 1e-6\n\n[[exercise]]\nid = "ex1"\n')
    result = validate.validate(courses.in_course(mine, NAME))
    assert "[variable.d_w]: d_w is not a graded variable; did you mean [variable.d_W]?" in result.errors[0]
    # the instructor's private runs are named by their own file
    mine = _copy_course(course, tmp_path / "c")
    private = mine / "private" / NAME / "hidden_runs.toml"
    private.parent.mkdir(parents=True)
    private.write_text("[[hidden_run]]\nn_head = 2\n", encoding="utf-8")
    result = validate.validate(courses.in_course(mine, NAME))
    assert result.errors == (
        f"{private}: hidden run 1: 'n_head' is not a parameter (the parameters: seed, batch_size, n_in, n_out)",
    )


def test_validate_catches_a_test_cell_worth_other_points_and_a_stub_left_out(course, tmp_path):
    mine = _copy_course(course, tmp_path)
    path = mine / "source" / NAME / f"{NAME}.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "check_ex1":
            cell.metadata["nbgrader"]["points"] = 7
        if gid == "ex1":
            cell.source = cell.source.replace("d_b = None\n", "")
    nbformat.write(nb, path)
    skeleton_release(mine)
    result = validate.validate(courses.in_course(mine, NAME), seeds=2, with_mistakes=False)
    assert result.errors == (
        "test cell check_ex1 is worth 7 points in nbgrader, but its exercise grades 4: set the cell's points to 4 "
        "(or the variables' points in the rubric)",
    )
    assert any("assigns d_b, which is not graded" in w for w in result.warnings)


def skeleton_release(course: Path) -> None:
    from grader import release

    location = courses.in_course(course, NAME)
    assert location is not None
    release.release(location)
