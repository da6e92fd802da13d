"""The cell clock: a cell that runs past its share of the time is interrupted, as Jupyter interrupts one.

Runs in the child on every platform: where there are no signals to send a thread (Windows) it falls
back on `_thread.interrupt_main`.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType


class CellClock:
    """Interrupts the cell running in the main thread once it has had its share of the time.

    The interrupt is Python's own for Ctrl-C (SIGINT where there are signals, `interrupt_main` where
    not), so it lands as a KeyboardInterrupt in the cell, between two bytecodes or in a blocking call.
    Our handler raises only while a cell runs: an interrupt that arrives just after the cell ended does
    nothing. A notebook that catches or ignores it runs on until the run's own timeout ends the process.
    """

    current: CellClock | None = None  # the signal handler is process-wide: it finds the running cell's clock here

    def __init__(self) -> None:
        self.running = False
        self.rang = False
        self.lock = threading.Lock()

    @staticmethod
    def install() -> None:
        """In the main thread, before the first cell: our handler for the interrupt."""

        def handler(signum: int, frame: FrameType | None) -> None:
            clock = CellClock.current
            if clock is not None and clock.running:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)

    @contextlib.contextmanager
    def budget(self, seconds: float | None) -> Iterator[None]:
        self.rang = False
        if not seconds:
            yield
            return
        timer = threading.Timer(seconds, self._ring)
        timer.daemon = True
        CellClock.current = self
        self.running = True
        timer.start()
        try:
            yield
        finally:
            with self.lock:
                self.running = False
            timer.cancel()

    def _ring(self) -> None:
        with self.lock:
            if not self.running:
                return
            self.rang = True
            if hasattr(signal, "pthread_kill"):  # a real signal: it also ends a blocking call (sleep, read)
                main = threading.main_thread().ident
                assert main is not None  # the main thread is running: it has an ident
                signal.pthread_kill(main, signal.SIGINT)
            else:
                _thread.interrupt_main()
