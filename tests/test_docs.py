"""The documentation site builds in strict mode: a broken link, a missing anchor, a page left out of the nav or
a missing snippet (README.md, ARCHITECTURE.md) fails it, as in CI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    # From the repository's root: the snippets' base path is relative to it.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "index.html").exists()
