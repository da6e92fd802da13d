"""Shared fixtures. The grader pins torch's scalar CPU kernels; so must the tests, before torch loads."""

from __future__ import annotations

import os

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import subprocess
import sys
from pathlib import Path

import pytest

from grader import assignment as assignments

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
SOLUTION = ROOT / "solutions" / "backprop_ninja.ipynb"
RELEASE = ROOT / "assignments" / "backprop_ninja.ipynb"
LECTURE_NAMES = ROOT.parent / "shared" / "reference" / "names.txt"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run the slow end-to-end tests (CI does)")


# The end-to-end tests that take the longest, moved behind --runslow so that the default `pytest` stays
# under five minutes on a 2-core machine (each took 8 s or more there; CI's `pytest --runslow` runs them all,
# unchanged). Each is a node id or its prefix; a representative of each area stays in the default run.
SLOW = (
    "tests/test_fuzz.py::test_no_damaged_notebook_breaks_grader_check",  # 300 damaged notebooks (180 s)
    "tests/test_fuzz.py::test_grade_gives_a_row_with_a_reason_to_every_damaged_file",  # a class of them (58 s)
    "tests/test_fuzz.py::test_a_sample_through_the_console_script",
    "tests/test_seeds.py::test_full_marks_and_a_caught_planted_error_for_50_seeds",  # 50 seeds (94 s)
    "tests/test_behaviour.py::test_grader_grade_keeps_the_same_points_as_grader_check",  # every notebook twice
    "tests/test_behaviour.py::test_behaviour_notebook[infinite_loop]",  # waits out its timeouts
    "tests/test_behaviour.py::test_a_run_that_stops_part_way_keeps_what_it_finished[ex4_hangs]",
    "tests/test_behaviour.py::test_a_run_that_stops_part_way_keeps_what_it_finished[ex2_endless]",
    "tests/test_behaviour.py::test_a_run_that_stops_part_way_keeps_what_it_finished[hidden_run_hangs]",
    "tests/test_behaviour.py::test_a_hung_cell_is_interrupted_and_the_run_goes_on",
    "tests/test_behaviour.py::test_a_cell_that_swallows_the_interrupt_is_stopped_by_the_run_timeout",
    "tests/test_hostile.py::test_the_batch_finishes_and_grades_everyone",  # a hostile class per backend
    "tests/test_hostile.py::test_honest_grades_hold",  # (the same class)
    "tests/test_hostile.py::test_every_attack_costs_its_exercise_with_a_reason",  # (the same class)
    "tests/test_hostile.py::test_nothing_is_left_running",  # (the same class: 50 s of the default run alone)
    "tests/test_behaviour.py::test_behaviour_notebook[copied_numbers]",  # three runs of a whole notebook each
    "tests/test_nbgrader.py::test_nbgrader_generate_assignment_reproduces_the_release[activations_batchnorm]",
    "tests/test_nbgrader.py::test_nbgrader_generate_assignment_reproduces_the_release[leaky_abstractions]",
    "tests/test_nbgrader.py::test_nbgrader_generate_assignment_reproduces_the_release[wavenet]",  # (ninja's stays)
    "tests/test_nbgrader.py::test_an_edited_solution_no_longer_matches_the_release",
    "tests/test_course.py::test_a_class_is_graded_from_the_course_and_from_the_assignments_folder",
    "tests/test_course.py::test_validate_catches_a_test_cell_worth_other_points_and_a_stub_left_out",
    "tests/test_portability.py::test_the_portable_backend_gives_the_linux_backends_report[infinite_loop",
    "tests/test_portability.py::test_the_pytest_plugin_grades_with_the_portable_backend",
    "tests/test_portability.py::test_grader_grade_with_parallel_jobs_and_a_folder_name_with_spaces",
    "tests/test_pytest_plugin.py::test_pytest_machinery_works_unchanged",  # pytest started a dozen times
    "tests/test_pytest_plugin.py::test_a_notebook_whose_cell_hangs",
    "tests/test_pytest_plugin.py::test_the_untouched_release_fails_every_variable_with_its_reason",
    "tests/test_pytest_plugin.py::test_usage_mistakes_are_usage_errors",
    "tests/test_pytest_plugin.py::test_junit_xml_from_both_paths_validates_with_points_as_properties",
    "tests/test_pytest_plugin.py::test_two_wrong_gradients_fail_exactly_with_their_hints",
    "tests/test_pytest_plugin.py::test_the_classroom_template_scores_as_grader_check",
    "tests/test_sandbox.py::test_a_run_ends_when_its_grader_is_killed",
    # each 6 s or more, and each behaviour also held by a faster test that stays in the default run
    "tests/test_colab.py::test_every_test_cell_is_among_the_cells_checked[activations_batchnorm]",  # 12 s
    "tests/test_portability.py::test_the_portable_backend_gives_the_linux_backends_report[wrong_d_W2",  # (full_marks)
    "tests/test_course.py::test_a_students_copy_alone_gets_the_report_the_instructor_gets",
    "tests/test_course.py::test_pytest_grades_a_course_notebook_with_grade_course",
    "tests/test_class_report.py::test_reports_are_graded_again_when_the_hidden_runs_or_the_rubric_change",
    # 4 to 6 s each, starting the command line, nbgrader or a killed grader: CI runs them, the loop does without
    "tests/test_class_report.py::test_without_canvas_assignment_a_canvas_download_gets_a_note_on_its_column",
    "tests/test_cli.py::test_renamed_notebook_without_metadata_grades_with_assignment_flag",
    "tests/test_cli.py::test_table_from_an_unrelated_directory",
    "tests/test_course.py::test_new_writes_an_nbgrader_course_that_validates_as_written",
    "tests/test_gradescope.py::test_a_notebook_that_kills_its_kernel_still_gets_results",
    "tests/test_lecture.py::test_grader_check_on_a_lecture_notebook_with_data",
    "tests/test_limits.py::test_a_memory_bomb_under_gradescope_s_768_mb_gives_a_valid_results_json[seven_processes]",
    "tests/test_limits.py::test_a_grader_stopped_mid_run_leaves_no_cgroup_behind",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
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


def user_pytest(
    cwd: Path, *args: str, python: str = sys.executable, env: dict[str, str] | None = None, timeout: float = 600
):
    """pytest as a user runs it in a folder of their own: `cwd`'s own `pytest.ini`, never this repository's
    configuration. Without `-c`, pytest looks for its configuration above the arguments' common folder, so
    a notebook under `tests/` would bring this repository's `-n auto` into the inner run. Its own
    `--basetemp` keeps the inner session from cleaning the numbered folders the outer sessions share."""
    ini = cwd / "pytest.ini"
    ini.exists() or ini.write_text("[pytest]\n", encoding="utf-8")
    command = [python, "-m", "pytest", "-c", str(ini), "-p", "no:cacheprovider", f"--basetemp={cwd / '.pytest-tmp'}"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def sandbox_processes(since: float, left_behind: bool = True) -> list:
    """Processes of the grader's sandboxes (workers, interpreters, and every fork of theirs: a fork keeps
    its parent's command line) started at or after `since` (`time.time()`) and still running.

    `left_behind`: only those no live grader (or pytest, holding a warm pool) is an ancestor of: what a
    finished grader left, not what another grading on this machine is running right now.
    """
    import psutil

    def attached(p) -> bool:
        try:
            for ancestor in p.parents():
                command = " ".join(ancestor.cmdline())
                if "grader.sandbox." not in command and ("pytest" in command or "grader" in command):
                    return True
        except psutil.Error:
            pass
        return False

    # psutil dates a process from the boot time in /proc/stat, which is whole seconds: a process started after
    # `since` can be dated up to a second before it (on a machine booted at hh:mm:ss.7, by 0.7 s)
    found = []
    for p in psutil.process_iter(["create_time", "cmdline", "status"]):
        if (
            (p.info["create_time"] or 0) >= since - 1.01
            and p.info["status"] != psutil.STATUS_ZOMBIE
            and any("grader.sandbox." in part for part in p.info["cmdline"] or [])
            and not (left_behind and attached(p))
        ):
            found.append(p)
    return found


class Listener:
    """A TCP listener on 127.0.0.1 that records who reached it: what a notebook must not do from a sandbox."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.reached: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, peer = self.socket.accept()
            except OSError:  # closed
                return
            connection.close()
            self.reached.append(peer)

    def close(self) -> None:
        self.socket.close()


STAND_IN = Path(__file__).resolve().parent / "stand_in"


def without_linux_calls() -> dict[str, str]:
    """The environment of a grader (and of everything it starts) that lacks what macOS and Windows lack:
    `tests/stand_in/sitecustomize.py` takes those calls away."""
    path = os.pathsep.join([str(STAND_IN), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=path)


def linux_sandbox() -> bool:
    """Whether the Linux backend works on this machine (root, or unprivileged user namespaces)."""
    from grader import sandbox

    return sandbox.choose("auto").name == "linux"


@pytest.fixture(scope="session")
def pool():
    """One warm worker for the whole session (torch imported and the data built once), as a batch has."""
    from grader import grade, sandbox

    with sandbox.Pool(grade.hidden_folders(assignments.load("backprop_ninja"))) as workers:
        yield workers


def answered(name: str, edits: tuple[tuple[str, str, str], ...] = ()):
    """The release of assignment `name` with the solution's answer cells typed in (nbgrader's markers
    dropped), as a student hands it in; then each (grade_id, old, new) edit applied once."""
    import re

    import nbformat

    def gid(cell):
        return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")

    release = nbformat.read(ROOT / "assignments" / f"{name}.ipynb", as_version=4)
    solution = {gid(c): c for c in nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4).cells}
    for cell in release.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell.source = re.sub(r"\n?[ \t]*### (BEGIN|END) SOLUTION", "", solution[gid(cell)].source)
    for cell_id, old, new in edits:
        cell = next(c for c in release.cells if gid(c) == cell_id)
        assert cell.source.count(old) == 1, old
        cell.source = cell.source.replace(old, new)
    return release


def answered_in_course(course: Path, name: str, old: str = "", new: str = ""):
    """A course assignment's release with its solution's answers typed in (one line changed, if asked), as a
    student hands it in."""
    import nbformat

    solution = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution.cells if "nbgrader" in c.metadata}
    nb = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            source = answers[meta["grade_id"]].replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", "")
            assert old in source, old
            cell.source = source.replace(old, new) if old else source
    return nb
