"""The feedback page: self-contained HTML with the hints, a heatmap per wrong gradient and the forward
graph coloured by verdict, opened in a real headless browser where one can be had."""

from __future__ import annotations

import shutil
import subprocess

import nbformat
import pytest
from conftest import NOTEBOOKS

from grader import assignment as assignments
from grader.grade import feedback_edges, grade_with_runs
from grader.reports import feedback


@pytest.fixture(scope="module")
def page(tmp_path_factory, pool) -> str:
    # partly wrong: d_probs twice too large (everything below follows from it), d_W2 off by 1/n
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1")
    answer.source = answer.source.replace(
        "d_probs = (1.0 / probs) * d_logprobs", "d_probs = 2 * (1.0 / probs) * d_logprobs"
    )
    answer.source = answer.source.replace("d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits / n")
    path = tmp_path_factory.mktemp("feedback") / "partly_wrong.ipynb"
    nbformat.write(nb, str(path))
    report, runs = grade_with_runs(path, pool=pool)
    return feedback.page(report, runs, feedback_edges(assignments.load("backprop_ninja")))


def test_the_page_holds_the_hints_the_pictures_and_nothing_from_elsewhere(page):
    assert page.startswith("<!doctype html>")
    assert "it is the right gradient times 2" in page  # d_probs
    assert "d_W2: it is the right gradient times 1/n (= 1/32)" in page  # its own step, below the root cause
    assert "The first wrong step is <strong>d_probs</strong>" in page
    assert page.count("src='data:image/svg+xml;base64,") >= 1  # the graph
    assert page.count("<img ") == page.count("src='data:image/png;base64,") + 1 >= 3  # graph + two heatmaps
    assert "http://" not in page and "https://" not in page  # self-contained: no server, no other file


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium here (CI installs Debian's chromium)")
def test_the_page_loads_in_a_headless_browser_with_every_image(page, tmp_path):
    path = tmp_path / "feedback.html"
    path.write_text(page, encoding="utf-8")
    dom = subprocess.run(
        [_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-images="loaded"' in dom  # set by the page itself once every image has decoded
    assert "The first wrong step is" in dom and "a factor too many or too few?" in dom
    shot = tmp_path / "feedback.png"
    subprocess.run(
        [
            _browser(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={shot}",
            "--window-size=1000,2000",
            path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG"
