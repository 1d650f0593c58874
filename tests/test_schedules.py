"""textvae.schedules: KL weight, learning rate and word-dropout schedules."""

from __future__ import annotations

import math

import pytest

from textvae.config import KLConfig, WordDropoutConfig
from textvae.schedules import kl_weight, learning_rate, word_dropout_rate


@pytest.mark.parametrize("schedule", ["linear", "sigmoid"])
@pytest.mark.parametrize("start", [0, 7])
def test_ramp_endpoints_and_monotone(schedule, start):
    cfg = KLConfig(schedule=schedule, beta_max=0.8, start_step=start, warmup_steps=50)
    total = 200
    betas = [kl_weight(s, cfg, total) for s in range(total)]
    assert all(b == 0.0 for b in betas[:start])
    assert betas[start] == pytest.approx(0.0, abs=1e-12)
    assert betas[start + 50] == pytest.approx(0.8)
    assert all(b == pytest.approx(0.8) for b in betas[start + 50 :])
    ramp = betas[start : start + 51]
    assert all(a < b for a, b in zip(ramp, ramp[1:])), "strictly increasing during warmup"
    assert all(0.0 <= b <= 0.8 + 1e-12 for b in betas)


def test_linear_midpoint_and_sigmoid_shape():
    lin = KLConfig(schedule="linear", beta_max=1.0, warmup_steps=100)
    sig = KLConfig(schedule="sigmoid", beta_max=1.0, warmup_steps=100)
    assert kl_weight(25, lin, 1000) == pytest.approx(0.25)
    assert kl_weight(50, lin, 1000) == pytest.approx(0.5)
    # the logistic ramp is symmetric about the middle and flatter than linear near the ends
    assert kl_weight(50, sig, 1000) == pytest.approx(0.5)
    assert kl_weight(10, sig, 1000) < kl_weight(10, lin, 1000)
    assert kl_weight(90, sig, 1000) > kl_weight(90, lin, 1000)
    assert kl_weight(30, sig, 1000) + kl_weight(70, sig, 1000) == pytest.approx(1.0)


def test_zero_warmup_is_a_step():
    cfg = KLConfig(schedule="linear", beta_max=0.5, start_step=3, warmup_steps=0)
    assert [kl_weight(s, cfg, 10) for s in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_constant():
    cfg = KLConfig(schedule="constant", beta_max=0.3, start_step=10, warmup_steps=5)
    assert {kl_weight(s, cfg, 100) for s in range(100)} == {0.3}


@pytest.mark.parametrize("cycles, total, start", [(4, 100, 0), (3, 90, 0), (5, 110, 10)])
def test_cyclical(cycles, total, start):
    cfg = KLConfig(schedule="cyclical", beta_max=2.0, cycles=cycles, ratio=0.5, start_step=start)
    betas = [kl_weight(s, cfg, total) for s in range(total)]
    period = (total - start) // cycles
    assert all(b == 0.0 for b in betas[:start])
    for c in range(cycles):
        cycle = betas[start + c * period : start + (c + 1) * period]
        assert cycle[0] == 0.0, f"cycle {c} does not restart at 0"
        assert max(cycle) == pytest.approx(2.0), f"cycle {c} never reaches beta_max"
        rise = math.ceil(0.5 * period)  # steps spent increasing: the first `ratio` of the cycle
        assert all(a < b for a, b in zip(cycle[:rise], cycle[1 : rise + 1])), "rises during the first half"
        assert all(b < 2.0 for b in cycle[:rise])
        assert all(b == pytest.approx(2.0) for b in cycle[rise:]), "stays at beta_max for the rest"
    restarts = sum(1 for a, b in zip(betas[start:], betas[start + 1 :]) if b < a)
    assert restarts == cycles - 1


def test_cyclical_ratio_one_ramps_all_cycle():
    cfg = KLConfig(schedule="cyclical", beta_max=1.0, cycles=2, ratio=1.0)
    betas = [kl_weight(s, cfg, 20) for s in range(20)]
    assert betas[0] == 0.0 and betas[10] == 0.0
    assert betas[5] == pytest.approx(0.5)
    assert all(a < b for a, b in zip(betas[:9], betas[1:10]))


def test_learning_rate_warmup_and_cosine():
    lr, min_lr, warm, total = 1e-3, 1e-4, 10, 110
    lrs = [learning_rate(s, lr, min_lr, warm, total) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(lr / warm)
    assert lrs[warm - 1] == pytest.approx(lr)
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1:warm]))
    assert lrs[warm] == pytest.approx(lr)  # cosine starts at the peak
    assert lrs[warm + 50] == pytest.approx((lr + min_lr) / 2)  # half way through the decay
    assert lrs[total] == pytest.approx(min_lr)  # min_lr at the end
    assert learning_rate(total + 100, lr, min_lr, warm, total) == pytest.approx(min_lr)
    decay = lrs[warm:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert all(min_lr - 1e-15 <= x <= lr + 1e-15 for x in lrs)
    # the cosine shape itself
    s = warm + 25
    assert lrs[s] == pytest.approx(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * 0.25)))


def test_learning_rate_without_warmup():
    assert learning_rate(0, 2e-3, 0.0, 0, 100) == pytest.approx(2e-3)
    assert learning_rate(100, 2e-3, 0.0, 0, 100) == pytest.approx(0.0)


def test_word_dropout_rate_constant_and_linear():
    const = WordDropoutConfig(rate=0.25, schedule="constant", warmup_steps=100)
    assert {word_dropout_rate(s, const) for s in (0, 1, 50, 1000)} == {0.25}
    lin = WordDropoutConfig(rate=0.4, schedule="linear", warmup_steps=100)
    assert word_dropout_rate(0, lin) == 0.0
    assert word_dropout_rate(50, lin) == pytest.approx(0.2)
    assert word_dropout_rate(100, lin) == pytest.approx(0.4)
    assert word_dropout_rate(5000, lin) == pytest.approx(0.4)
    rates = [word_dropout_rate(s, lin) for s in range(101)]
    assert all(a < b for a, b in zip(rates, rates[1:]))
    # a linear schedule without warmup is the constant rate
    assert word_dropout_rate(0, WordDropoutConfig(rate=0.3, schedule="linear", warmup_steps=0)) == 0.3
