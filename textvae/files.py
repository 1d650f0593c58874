"""Writing files so that a reader never sees half of one: the one atomic write of textvae,
the run-folder lock and the fault-injection hook of the reliability tests.

Every file textvae produces (tokenizer, checkpoint side files, exports, plots, reports,
command outputs, the metrics log on resume) goes through :func:`atomic_write`: the bytes go to
a temporary file in the target's folder, are flushed to disk, and the temporary file is renamed
over the target. A kill at any instant leaves either the old file or the new one, never a mix.
Targets that are not regular files are never replaced: a symlink is written through (the link
stays), a FIFO or a device is written in place, a folder is refused.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from textvae.errors import InputError, TextVAEError

Writer = Callable[[Path], None]

FAULT_ENV = "TEXTVAE_FAULT_KILL_AT"
"""Test hook: ``N`` kills this process with SIGKILL at its N-th filesystem step (1-based)."""
FAULT_LOG_ENV = "TEXTVAE_FAULT_LOG"
"""Test hook: a file to which every filesystem step appends its name (to count the steps)."""
_fault_steps = 0


def fault_point(name: str) -> None:
    """Mark one filesystem step of a save (before a write, a rename, a removal).

    Does nothing unless the reliability tests set :data:`FAULT_ENV` or :data:`FAULT_LOG_ENV`;
    they kill the process at each step in turn and check that a complete checkpoint survives.
    """
    global _fault_steps
    kill_at, trace = os.environ.get(FAULT_ENV), os.environ.get(FAULT_LOG_ENV)
    if kill_at is None and trace is None:
        return
    _fault_steps += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{_fault_steps}\t{name}\n")
    if kill_at is not None and kill_at.strip() == str(_fault_steps):
        os.kill(os.getpid(), signal.SIGKILL)


def output_target(path: Union[str, Path]) -> Path:
    """The file a write to ``path`` lands in: a symlink's target (so the link survives), else
    ``path``. Raises InputError for a folder."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    return path


def check_not_input(output: Optional[Union[str, Path]], inputs: Sequence[Optional[Union[str, Path]]]) -> None:
    """Refuse an output file that is one of the inputs (it would be overwritten before it is read)."""
    if not output or str(output) == "-":
        return
    out = Path(os.path.realpath(output))
    for item in inputs:
        if not item or str(item) == "-":
            continue
        src = Path(os.path.realpath(item))
        same = src == out
        if not same and src.exists() and out.exists():
            try:
                same = os.path.samefile(src, out)
            except OSError:
                same = False
        if same:
            raise InputError(f"--output {output} is the input file {item}: choose another output file")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, Path], data: Union[bytes, str, Writer], mkdir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Args:
        path: the target file; its folder is created when ``mkdir`` is set.
        data: bytes, text (written as UTF-8), or a function that writes the temporary file
            given its path (for libraries that write files themselves: numpy, pyarrow).
    Returns:
        the target path.
    """
    path = output_target(path)
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        # A FIFO, a device or a socket: write into it; replacing it would destroy it.
        try:
            if callable(data):
                data(path)
            else:
                with open(path, "wb") as fh:
                    fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        except OSError as e:  # e.g. /dev/full: name the file
            raise OSError(e.errno, e.strerror, str(path)) from None
        return path
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fault_point(f"write {path.name}")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    except OSError as e:  # a read-only or full file system: name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        fault_point(f"rename {path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


CODE_FORMATS = (".npy", ".parquet")


def write_codes(path: Union[str, Path], texts: list[str], mu, logvar=None) -> list[Path]:
    """Posterior parameters, one row per sentence, atomically: ``.npy`` (mu; logvar, when given,
    to ``NAME.logvar.npy`` beside it) or ``.parquet`` (columns text, mu[, logvar]).
    Returns the files written."""
    from textvae.errors import InputError

    path = Path(path)
    if path.suffix not in CODE_FORMATS:
        raise InputError(f"--output must end in {' or '.join(CODE_FORMATS)}")
    if path.suffix == ".npy":
        import numpy as np

        written = [atomic_write(path, lambda tmp: np.save(tmp, mu.numpy()))]
        if logvar is not None:
            lv_path = path.with_name(path.stem + ".logvar.npy")
            written.append(atomic_write(lv_path, lambda tmp: np.save(tmp, logvar.numpy())))
        return written
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"text": texts, "mu": mu.tolist()}
    if logvar is not None:
        cols["logvar"] = logvar.tolist()
    return [atomic_write(path, lambda tmp: pq.write_table(pa.table(cols), tmp))]


# --------------------------------------------------------------------------- the run-folder lock


class FolderLock:
    """An exclusive lock on a folder (``flock`` on ``FOLDER/.lock``) held while a run writes it.

    The kernel drops the lock when its process ends, however it ends, so a killed run never
    blocks the next one; the file itself stays, holding the last holder's pid for the message.
    Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    NAME = ".lock"

    def __init__(self, folder: Union[str, Path], what: str = "run"):
        self.folder, self.what, self.fd = Path(folder), what, None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        path = self.folder / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                holder = path.read_text(encoding="utf-8").strip() or "?"
            except OSError:
                holder = "?"
            raise TextVAEError(f"{self.folder} is in use by another {self.what} (pid {holder}); wait for it "
                               "to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
