"""CPU threads: a default that does not collapse when other processes share the cores.

torch's OpenMP threads spin while they wait for each other (GNU OpenMP, the runtime of torch's
Linux builds, spins for 300,000 iterations before it sleeps). On a machine whose cores are all
busy (two threads on two cores beside another CPU-bound process), a spinning thread holds a
core that the thread it waits for needs, and training falls to a fraction of its idle speed.
textvae keeps torch's thread count (one per core: the count changes the floating-point results,
so it must not depend on the machine's load) and shortens the spin to ``GOMP_SPINCOUNT``
iterations, after which a waiting thread sleeps. That costs a little on an idle machine and
keeps most of the speed on a busy one; ``scripts/benchmark_threads.py`` measures the settings.
The waiting policy changes timing only, never the numbers.

This must happen before torch (and so OpenMP) is loaded: the command line calls
:func:`configure_threads` first thing. Python users can set the variables themselves; variables
already set in the environment are left alone.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Optional

SPIN_COUNT = "3000"
"""GNU OpenMP's spin before a waiting thread sleeps, unless the environment sets ``GOMP_SPINCOUNT``
or ``OMP_WAIT_POLICY``. Training steps per second of the default config's model on 2 cores, idle
and beside a second CPU-bound job (scripts/benchmark_threads.py): OpenMP's default spin 16-17
idle, 1.5-2.2 busy; 3,000: 14-15 and 6.6-7.1; passive waiting: 9.5 and 9.4-10; one thread:
10.4-11.2 either way. Real training of the default config (first 400 steps, idle): 20.3 steps/s
with OpenMP's default, 16.9 with 3,000."""


def configure_threads(threads: Optional[int] = None) -> None:
    """Shorten OpenMP's spin-wait (before torch loads) and, when ``threads`` is given, set torch's
    intra-op thread count (0 or None: torch's default, one per core)."""
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- standard streams


class ClosedStream(io.TextIOBase):
    """Stands in for a closed stdout: every write raises, so the command fails with one line."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed; redirect it to a file or use --output")


def silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush of what could not
    be written does not print a second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        sys.stdout = ClosedStream()
        return
