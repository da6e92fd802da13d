"""The Linux backend's worker process, started before it is known what it will run.

`Started` is Python up and `import torch` under way in a process of its own; `linux.Worker` sends it its
setup once the grader knows it, and the process reads it once its import is done. `grader check` starts one
first thing (`Pool.start_ahead`), so that the import overlaps the grader's own start, reading and planning
the notebook. This module imports nothing heavy (no nbformat, no torch): it is the first the grader needs.

Linux only (`SOCK_SEQPACKET`, the worker it starts): loaded only where the Linux backend works.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile

from grader.errors import SandboxError
from grader.sandbox.environment import child_env, worker_folder


class Started:
    """A worker process started before it is known what it will run, in a folder of its own (`workdir`, where
    `linux.Worker` puts the data files and the setup), talking to the grader on `sock`."""

    def __init__(self) -> None:
        """Raises `SandboxError` where the process cannot be started (its folder, socket and log then removed)."""
        try:
            self.workdir = worker_folder({})
        except OSError as e:
            raise SandboxError(f"could not make the worker's folder: {e}") from e
        theirs = None
        try:
            self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # a file, not a pipe: what the worker and its forks print is read only if it fails to start, and a
            # pipe nobody reads would block them once full
            self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the worker, closed in close()
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "grader.sandbox.linux_child", str(theirs.fileno())],
                cwd=self.workdir,
                env=child_env(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                start_new_session=True,
                # (no core files: the worker sets that limit itself, first thing, rather than a `preexec_fn`,
                # which is unsafe in a process with threads, as a batch's and a Dask worker's are. No
                # parent-death signal either: it follows the *thread* that started the worker, and a pool
                # outlives the threads of a batch or a Dask task. The worker ends when its socket closes
                # instead, which the grader's death does too, even by SIGKILL; its jobs die with it.)
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            for made in ("sock", "log"):
                if hasattr(self, made):
                    getattr(self, made).close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise SandboxError(f"could not start the worker process: {e}") from e
        finally:
            if theirs is not None:
                theirs.close()

    def close(self) -> None:
        """End it unused: it has run nothing but its imports, so it is killed rather than waited for."""
        self.sock.close()
        self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
