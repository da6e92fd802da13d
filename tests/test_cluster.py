"""Issue 9: batch grading on a Dask cluster gives the gradebook a local run gives, even when a worker dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, grader_command, linux_sandbox

pytest.importorskip("distributed")

MIXED = ["full_marks", "wrong_d_W2", "half_done", "raises_midway", "infinite_loop", "transposed_d_W1"]
TIMEOUT = "8"  # per run: the endless notebook holds a worker this long


def _batch(folder: Path) -> Path:
    folder.mkdir()
    for name in MIXED:
        shutil.copy(NOTEBOOKS / f"{name}.ipynb", folder / f"{name}.ipynb")
    (folder / "not_a_notebook.ipynb").write_text("{ this is not json", encoding="utf-8")
    return folder


def _gradebook(out: Path) -> dict[str, bytes]:
    """Every file of a batch's output, the measured peak memory left out of the reports (it is not a grade)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            if path.parent.name == "reports":
                report = json.loads(content)
                report.pop("peak_memory_mb", None)
                content = json.dumps(report, sort_keys=True).encode()
            files[str(path.relative_to(out))] = content
    return files


@pytest.fixture(scope="module")
def local_gradebook(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The batch, and what `grader grade` without Dask makes of it."""
    root = tmp_path_factory.mktemp("cluster")
    submitted = _batch(root / "submitted")
    out = root / "local"
    proc = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(submitted),
            "--assignment",
            "backprop_ninja",
            "--out",
            str(out),
            "--timeout",
            TIMEOUT,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return submitted, _gradebook(out)


class Cluster:
    """A real Dask scheduler and workers, started by hand on loopback as docs/integrations.md shows."""

    def __init__(self, folder: Path, workers: int) -> None:
        dask = str(Path(sys.executable).parent / "dask")
        self.file = folder / "scheduler.json"
        self.processes = [
            subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(self.file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        ]
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [
            subprocess.Popen(
                [dask, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(workers)
        ]
        self.processes += self.workers
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def kill(self, worker: subprocess.Popen) -> None:
        """SIGKILL a worker and everything it started (its nanny's worker process, its grading processes)."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def close(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_a_scheduler_and_two_workers_give_the_local_gradebook(tmp_path, local_gradebook):
    submitted, expected = local_gradebook
    cluster = Cluster(tmp_path, workers=2)
    try:
        out = tmp_path / "dask"
        proc = subprocess.run(
            [
                *grader_command(),
                "grade",
                str(submitted),
                "--assignment",
                "backprop_ninja",
                "--out",
                str(out),
                "--timeout",
                TIMEOUT,
                "--scheduler",
                cluster.address,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        cluster.close()
    got = _gradebook(out)
    assert set(got) == set(expected)
    assert [name for name in expected if got[name] != expected[name]] == []
    assert len([n for n in got if n.startswith("reports/")]) == len(MIXED) + 1


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing(tmp_path, local_gradebook):
    from grader import batch, submissions

    submitted, expected = local_gradebook
    cluster = Cluster(tmp_path, workers=2)
    out = tmp_path / "dask"
    killed = []

    def kill_one_worker(outcome) -> None:
        if not killed:  # the first report is in: both workers are busy with the rest
            cluster.kill(cluster.workers[0])
            killed.append(outcome.submission.student)

    try:
        found = submissions.discover([submitted], "backprop_ninja", tmp_path / "scratch")
        outcomes = batch.grade_all(
            found, "backprop_ninja", out, timeout=float(TIMEOUT), progress=kill_one_worker, scheduler=cluster.address
        )
        batch.write_outputs(out, "backprop_ninja", found)
    finally:
        cluster.close()
    assert killed and cluster.workers[0].returncode is not None
    assert len(outcomes) == len(MIXED) + 1
    got = _gradebook(out)
    assert [name for name in expected if got.get(name) != expected[name]] == []


def _spare_pids() -> list[int]:
    """On a Dask worker: the sandbox worker processes `dask_setup` started and no pool has taken yet."""
    from grader.integrations import cluster

    return [started.process.pid for started in cluster._SPARE]


def _pool_worker_pids() -> list[int]:
    """On a Dask worker: the sandbox worker processes of its pools."""
    from grader.integrations import cluster

    return [w.process.pid for pool, _, _ in cluster._POOLS.values() for w in pool.workers.values()]


@pytest.mark.slow
def test_the_workers_of_local_n_are_warm_before_their_first_task(tmp_path):
    # `--scheduler local:N` preloads `grader.integrations.cluster` (its `dask_setup`): each worker imports torch
    # and the grader's references as it starts, in the cluster's start-up, not in its first task; where the Linux
    # sandbox works, the sandbox worker process of its first batch starts then too, and that batch uses it
    from dask.distributed import Client

    from grader.integrations.cluster import local_cluster

    with local_cluster(1) as cluster, Client(cluster) as client:
        loaded = client.run(
            lambda: sorted(m for m in ("torch", "grader.reference", "grader.score") if m in sys.modules)
        )
        (spare,) = client.run(_spare_pids).values()
        notebook, out = str(NOTEBOOKS / "full_marks.ipynb"), str(tmp_path / "out")
        options = ["--assignment", "backprop_ninja", "--out", out, "--timeout", TIMEOUT]
        proc = subprocess.run(
            [*grader_command(), "grade", notebook, *options, "--scheduler", cluster.scheduler_address],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        (used,) = client.run(_pool_worker_pids).values()
        (left,) = client.run(_spare_pids).values()
    assert list(loaded.values()) == [["grader.reference", "grader.score", "torch"]]
    if linux_sandbox():
        assert len(spare) == 1 and used == spare and left == []
    else:
        assert spare == []
