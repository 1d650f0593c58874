"""Schedules as pure functions of the optimiser step: KL weight, learning rate, word dropout."""

from __future__ import annotations

import math

from textvae.config import KLConfig, WordDropoutConfig


def kl_weight(step: int, cfg: KLConfig, total_steps: int) -> float:
    """beta at ``step`` (0-based).

    - constant: beta_max throughout.
    - linear: 0 until start_step, then a straight ramp to beta_max over warmup_steps.
    - sigmoid: the logistic ramp of Bowman et al. (2016), rescaled to run exactly from
      0 at start_step to beta_max at start_step + warmup_steps.
    - cyclical: Fu et al. (2019): the steps after start_step are cut into ``cycles`` equal
      cycles; in each, beta rises linearly from 0 over the first ``ratio`` of the cycle and
      stays at beta_max for the rest.
    """
    if cfg.schedule == "constant":
        return cfg.beta_max
    t = step - cfg.start_step
    if t < 0:
        return 0.0
    if cfg.schedule == "cyclical":
        period = max(1, total_steps - cfg.start_step) / cfg.cycles
        phase = (t % period) / period
        return cfg.beta_max * min(1.0, phase / cfg.ratio)
    if cfg.warmup_steps == 0 or t >= cfg.warmup_steps:
        return cfg.beta_max
    frac = t / cfg.warmup_steps
    if cfg.schedule == "linear":
        return cfg.beta_max * frac
    # sigmoid with steepness k over [0, 1], shifted and scaled so that s(0) = 0 and s(1) = 1
    k = 10.0
    lo, hi = 1 / (1 + math.exp(k / 2)), 1 / (1 + math.exp(-k / 2))
    s = 1 / (1 + math.exp(-k * (frac - 0.5)))
    return cfg.beta_max * (s - lo) / (hi - lo)


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``lr`` over warmup_steps, then cosine decay to ``min_lr`` at total_steps."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    span = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def word_dropout_rate(step: int, cfg: WordDropoutConfig) -> float:
    """Word-dropout probability at ``step``: constant, or a linear ramp from 0 over warmup_steps."""
    if cfg.schedule == "constant" or cfg.warmup_steps == 0:
        return cfg.rate
    return cfg.rate * min(1.0, step / cfg.warmup_steps)
