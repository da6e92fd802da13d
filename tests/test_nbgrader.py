"""nbgrader: the solutions are nbgrader source notebooks, `nbgrader generate_assignment` makes assignments/
(`grader release` runs it, then writes the copy of the assignment a student's `grader check` reads into the
notebook's metadata), and a real course autogrades them the way `grader check` does, except where a
submission cheats inside its own kernel, which `grader gradebook` catches."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import RELEASE, ROOT, SOLUTION, answered, grader_command

from grader import assignment as assignments
from grader import embedded
from grader.release import embed


def generate(solution: Path, out: Path) -> Path:
    """What `grader release` writes for the shipped assignment of `solution`, written to `out` instead."""
    from grader import release

    release.generate(solution, out, solution.stem)
    # (at `out`, not in assignments/: the same files otherwise, the rubric and data beside the released one)
    embed(out, dataclasses.replace(assignments.locate(solution.stem), released=out, origin="folder"))
    return out


def _without_copy(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path` without the copy of the assignment that `grader release` adds to nbgrader's."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.get("grader", {}).pop(embedded.KEY, None)
    return nb


pytest.importorskip("nbgrader")

RUBRIC = assignments.rubric_of("backprop_ninja")
NAME = "backprop_ninja"


def _differences(a: Path, b: Path, copy: bool = True) -> list[str]:
    """Cells (by index) where two notebooks differ, and whether their metadata does (`copy=False`: leaving
    out the assignment's copy that `grader release` adds)."""
    x, y = (nbformat.read(p, as_version=4) if copy else _without_copy(p) for p in (a, b))
    out = [] if x.metadata == y.metadata else ["notebook metadata"]
    if len(x.cells) != len(y.cells):
        out.append(f"{len(x.cells)} cells vs {len(y.cells)}")
    out += [f"cell {i}" for i, (c, d) in enumerate(zip(x.cells, y.cells)) if c != d]
    return out


ALL = assignments.known()


@pytest.mark.parametrize("name", ALL)
def test_solutions_are_valid_nbgrader_source_notebooks(name):
    nb = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)
    graded = assignments.rubric_of(name)
    nbformat.validate(nb)
    by_id = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            assert "parameters" in cell.metadata.get("tags", []), cell.source[:60]  # papermill's, editable
            continue
        assert meta["schema_version"] == 3
        assert {"grade", "solution", "locked", "grade_id"} <= set(meta)
        assert meta["locked"] != meta["solution"]  # answer cells are open, everything else is read-only
        if meta["solution"]:
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
        by_id[meta["grade_id"]] = meta
    for ex in graded.exercises:  # one autograder test cell per exercise, worth the exercise's points
        test = by_id[ex.test_cell]
        assert test["grade"] and test["locked"] and float(test["points"]) == ex.max_score
        assert ex.test_cell not in graded.reference_cells and ex.test_cell in graded.skip_cells
    tests = [gid for gid, meta in by_id.items() if meta["grade"]]
    assert sorted(tests) == sorted(ex.test_cell for ex in graded.exercises)


@pytest.mark.parametrize("name", ALL)
def test_nbgrader_generate_assignment_reproduces_the_release(tmp_path, name):
    generated = generate(ROOT / "solutions" / f"{name}.ipynb", tmp_path / "released.ipynb")
    assert _differences(generated, ROOT / "assignments" / f"{name}.ipynb") == [], (
        "assignments/ is stale: run `grader release NAME` after editing solutions/"
    )


def test_an_edited_solution_no_longer_matches_the_release(tmp_path):
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells[0].source += "\n\nOne more sentence from the author."
    edited = tmp_path / SOLUTION.name
    nbformat.write(nb, edited)
    assert _differences(generate(edited, tmp_path / "out" / "released.ipynb"), RELEASE) == ["cell 0"]


# --- a real nbgrader course ------------------------------------------------------------------------


def _answered(replace: dict[str, tuple[str, str]] | None = None):
    """The release with the solution's answer cells pasted in, as a student would hand it in."""
    return answered(NAME, tuple((gid, old, new) for gid, (old, new) in (replace or {}).items()))


SUBMISSIONS = {
    "ada": _answered,  # full marks
    # d_W2 divided by n once too often: Exercise 1 loses one point
    "ben": lambda: _answered(replace={"ex1": ("d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits / n")}),
    "cy": lambda: nbformat.read(RELEASE, as_version=4),  # the untouched release
}


def _cheat():
    """All-ones Exercise 1 answers, and comparisons patched to say yes inside the student's kernel."""
    nb = nbformat.read(RELEASE, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "ex1":
            cell.source = "torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n" + "\n".join(
                f"d_{v.of} = torch.ones_like({v.of})" for v in RUBRIC.exercises[0].variables
            )
    return nb


SUBMISSIONS["dee"] = _cheat


def _nbgrader(course: Path, *args: str) -> None:
    # nbgrader runs `alembic`: beside this interpreter, even when its virtual environment is not activated
    env = os.environ | {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _scores(course: Path, students=SUBMISSIONS) -> dict[str, list[float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s: [gb.find_grade(ex.test_cell, NAME, NAME, s).score for ex in RUBRIC.exercises] for s in students}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    (course / "source" / NAME).mkdir(parents=True)
    shutil.copyfile(SOLUTION, course / "source" / NAME / f"{NAME}.ipynb")
    shutil.copyfile(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    _nbgrader(course, "generate_assignment", NAME)
    # nbgrader's own release is ours but for the assignment's copy in the metadata, which grader release adds
    made = course / "release" / NAME / f"{NAME}.ipynb"
    assert _differences(made, RELEASE) == ["notebook metadata"]
    assert _differences(made, RELEASE, copy=False) == []
    for student, make in SUBMISSIONS.items():
        folder = course / "submitted" / student / NAME
        folder.mkdir(parents=True)
        nbformat.write(make(), folder / f"{NAME}.ipynb")
        (folder / "timestamp.txt").write_text("2026-11-20 12:00:00.000000 UTC")
    _nbgrader(course, "autograde", NAME)
    return course


@pytest.mark.slow
def test_nbgrader_autograde_gives_the_points_grader_check_gives(course):
    autograded = _scores(course)
    assert autograded["ada"] == [26, 1, 1, 8]
    assert autograded["ben"] == [25, 1, 1, 8]
    assert autograded["cy"] == [0, 0, 0, 0]
    assert autograded["dee"] == [26, 0, 0, 0]  # nbgrader's tests ran in the cheating kernel
    for student in ("ada", "ben", "cy", "dee"):
        path = course / "submitted" / student / NAME / f"{NAME}.ipynb"
        proc = subprocess.run(
            [*grader_command(), "check", str(path), "--json"], capture_output=True, text=True, timeout=300
        )
        ours = [e["score"] for e in json.loads(proc.stdout)["exercises"]]
        if student != "dee":
            assert ours == autograded[student], student
        else:
            assert ours == [0, 0, 0, 0]


@pytest.mark.slow
def test_grader_gradebook_writes_our_scores_where_formgrader_reads_them(course):
    from nbgrader.api import Gradebook

    url = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(url) as gb:  # a grader's hand-entered score, which must survive
        gb.find_grade("check_ex2", NAME, NAME, "ben").manual_score = 0.5
        gb.db.commit()
    # a late submission that nbgrader never autograded: our command creates its records
    (course / "submitted" / "eve" / NAME).mkdir(parents=True)
    nbformat.write(_answered(), course / "submitted" / "eve" / NAME / f"{NAME}.ipynb")
    (course / "submitted" / "eve" / NAME / "timestamp.txt").write_text("2026-11-21 09:30:00.000000 UTC")

    proc = subprocess.run(
        [*grader_command(), "gradebook", str(course), NAME], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 submissions of backprop_ninja graded" in proc.stdout
    scores = _scores(course, [*SUBMISSIONS, "eve"])
    assert scores == {
        "ada": [26, 1, 1, 8],
        "ben": [25, 0.5, 1, 8],
        "cy": [0, 0, 0, 0],
        "dee": [0, 0, 0, 0],
        "eve": [26, 1, 1, 8],
    }

    with Gradebook(url) as gb:
        assert gb.find_comment("ex1", NAME, NAME, "ben").auto_comment.startswith(
            "d_W2: it is the right gradient times 1/n (= 1/32)"
        )
        assert gb.find_comment("ex1", NAME, NAME, "ada").auto_comment is None
        assert gb.find_submission(NAME, "dee").score == 0
        ben = gb.find_grade("check_ex2", NAME, NAME, "ben")
        assert ben.auto_score == 1 and ben.manual_score == 0.5 and ben.needs_manual_grade
        assert not gb.find_grade("check_ex2", NAME, NAME, "ada").needs_manual_grade
        assert gb.find_submission(NAME, "eve").timestamp.isoformat().startswith("2026-11-21T09:30")


def test_gradebook_command_refuses_a_folder_that_is_not_a_course(tmp_path):
    proc = subprocess.run(
        [*grader_command(), "gradebook", str(tmp_path), NAME], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr == f"grader: {tmp_path} is not an nbgrader course: it has no gradebook.db (or pass --db URL)\n"
    assert not (tmp_path / "gradebook.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, edit",
    [
        ("activations_batchnorm", ("ex1", "kaiming_std = (5 / 3) / fan_in**0.5", "kaiming_std = (5 / 3) / fan_in")),
        ("leaky_abstractions", ("relu", "d_b_relu = d_pre.sum(0)", "d_b_relu = 2 * d_pre.sum(0)")),
    ],
)
def test_nbgrader_autograde_agrees_on_the_other_assignments(tmp_path, name, edit):
    """Their hidden tests (values checked against numbers the release must not show) under real nbgrader."""
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / name).mkdir(parents=True)
    shutil.copyfile(ROOT / "solutions" / f"{name}.ipynb", course / "source" / name / f"{name}.ipynb")
    shutil.copyfile(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    _nbgrader(course, "generate_assignment", name)
    students = {"ada": answered(name), "ben": answered(name, (edit,))}
    for student, nb in students.items():
        folder = course / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{name}.ipynb")
    _nbgrader(course, "autograde", name)
    graded = assignments.rubric_of(name)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        autograded = {
            s: [gb.find_grade(ex.test_cell, name, name, s).score for ex in graded.exercises] for s in students
        }
    for student in students:
        path = course / "submitted" / student / name / f"{name}.ipynb"
        proc = subprocess.run(
            [*grader_command(), "check", str(path), "--json"], capture_output=True, text=True, timeout=300
        )
        assert [e["score"] for e in json.loads(proc.stdout)["exercises"]] == autograded[student], student
    assert autograded["ada"] == [ex.max_score for ex in graded.exercises]
    assert (
        sum(autograded["ben"]) < graded.max_score
    )  # (in leaky_abstractions the wrong d_b_relu also moves the dead mask)
