"""Writing files so that a reader never sees half of one: the one atomic write of textvae.

Every file textvae produces (tokenizer, checkpoint side files, exports, plots, reports,
command outputs, the metrics log on resume) goes through :func:`atomic_write`: the bytes go to
a temporary file in the target's folder, are flushed to disk, and the temporary file is renamed
over the target. A kill at any instant leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

Writer = Callable[[Path], None]


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
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
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
