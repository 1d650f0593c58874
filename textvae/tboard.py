"""Optional TensorBoard event files next to ``metrics.jsonl`` (``train.tensorboard: true``).

The training loop writes the same records as always; :class:`TensorBoardLog` mirrors each one
as scalars tagged ``<split>/<key>`` (``train/rec``, ``train/kl``, ``train/beta``,
``train/word_dropout``, ``train/lr``, ``train/grad_norm``, ``valid/active_units``...), plus
``train/beta_kl``, the KL part of the loss. Needs the ``tensorboard`` package
(``pip install 'textvae[viz]'``); view with ``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from textvae.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"
_SKIP = ("step", "split", "epoch")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Writes metric records as TensorBoard scalars under ``run_dir/tensorboard``.

    Args:
        run_dir: the run folder.
        start_step: on resume, the checkpoint's step: events after it from the interrupted
            run are purged, as the JSONL log drops its records after that step.
    """

    def __init__(self, run_dir: str | Path, start_step: int = 0):
        if not tensorboard_available():
            raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'textvae[viz]'")
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(run_dir) / TENSORBOARD_DIR
        if not start_step:  # a fresh run: events of an earlier attempt in this folder would mix in
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step or None,
                                    flush_secs=30)

    def write(self, record: dict[str, Any]) -> None:
        step, split = int(record["step"]), str(record.get("split", "train"))
        for key, value in record.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{split}/{key}", value, step)
        if split == "train" and "beta" in record and "kl_objective" in record:
            self.writer.add_scalar("train/beta_kl", record["beta"] * record["kl_objective"], step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
