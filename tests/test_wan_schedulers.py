"""The official Wan sigma grids and solver updates, re-derived from their formulas (not from the official code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from wan_animate.wan.schedulers import make_scheduler


def shifted(s: float, shift: float) -> float:
    return shift * s / (1 + (shift - 1) * s)


@pytest.mark.parametrize("steps,shift", [(20, 5.0), (4, 5.0), (30, 3.0), (1, 5.0), (7, 1.0)])
def test_dpm_grid_is_the_official_get_sampling_sigmas(steps: int, shift: float) -> None:
    # Official dpm++: sigma_i = shift(1 - i / steps) for i < steps, then 0; timesteps = int(1000 sigma_i).
    expected = [shifted(1 - i / steps, shift) for i in range(steps)]
    scheduler = make_scheduler("dpm++", shift)
    scheduler.set_timesteps(steps, device="cpu")
    assert scheduler.sigmas.dtype == torch.float32
    np.testing.assert_array_equal(scheduler.sigmas.numpy(), np.array(expected + [0.0], dtype=np.float32))
    assert scheduler.timesteps.tolist() == [int(1000 * s) for s in expected]
    assert scheduler.timesteps.dtype == torch.int64
    assert scheduler.sigmas[0].item() == 1.0  # starts at pure noise, unlike diffusers' flow grid (0.999)


@pytest.mark.parametrize("steps,shift", [(20, 5.0), (4, 5.0), (30, 3.0), (1, 5.0), (7, 1.0)])
def test_unipc_grid_is_the_official_flow_unipc(steps: int, shift: float) -> None:
    # Official unipc: linspace(sigma_max, 0, steps + 1)[:-1] with sigma_max = float32(0.999), shifted, then 0.
    sigma_max = float(np.float32(0.999))
    expected = [shifted(sigma_max * (1 - i / steps), shift) for i in range(steps)]
    scheduler = make_scheduler("unipc", shift)
    scheduler.set_timesteps(steps, device="cpu")
    np.testing.assert_allclose(scheduler.sigmas.numpy(), np.array(expected + [0.0], dtype=np.float32), rtol=0, atol=0)
    assert scheduler.timesteps.tolist() == [int(1000 * s) for s in expected]


def test_grids_differ_from_diffusers_defaults() -> None:
    """Deliberate difference from WanAnimatePipeline's scheduler: its own flow grids start at 1 - 1/1000 / 1.0."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    stock_dpm = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    stock_dpm.set_timesteps(20)
    ours = make_scheduler("dpm++", 5.0)
    ours.set_timesteps(20)
    assert stock_dpm.sigmas[0].item() < 1.0 == ours.sigmas[0].item()
    stock_unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    stock_unipc.set_timesteps(20)
    ours_unipc = make_scheduler("unipc", 5.0)
    ours_unipc.set_timesteps(20)
    assert not torch.equal(stock_unipc.sigmas, ours_unipc.sigmas)


def _lam(sigma: float) -> float:
    """log-SNR of the flow path x = (1 - sigma) x0 + sigma noise: log((1 - sigma) / sigma)."""
    return math.log(1 - sigma) - math.log(sigma) if sigma < 1 else -math.inf


def test_dpm_solver_pp_updates_match_the_formulas() -> None:
    """Three steps of 2nd-order DPM-Solver++ (midpoint), data prediction x0 = x - sigma v, computed by hand."""
    steps, shift = 6, 5.0
    scheduler = make_scheduler("dpm++", shift)
    scheduler.set_timesteps(steps)
    sig = [float(s) for s in scheduler.sigmas]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 3, 3, generator=gen)
    velocities = [torch.randn(1, 4, 2, 3, 3, generator=gen) for _ in range(3)]

    got = x.clone()
    for i, t in enumerate(scheduler.timesteps[:3]):
        got = scheduler.step(velocities[i], t, got, return_dict=False)[0]

    expected = x.clone().double()
    x0_preds = []
    for i in range(3):
        s, s_next = sig[i], sig[i + 1]
        x0 = expected - s * velocities[i].double()
        x0_preds.append(x0)
        h = _lam(s_next) - _lam(s)
        decay = 0.0 if math.isinf(h) else math.exp(-h)
        if i == 0:  # first order (DDIM): x' = (s'/s) x - a' (e^-h - 1) x0
            expected = (s_next / s) * expected - (1 - s_next) * (decay - 1) * x0
        else:  # second order midpoint: D1 = (x0_i - x0_{i-1}) / r, r = h_prev / h
            h_prev = _lam(s) - _lam(sig[i - 1])
            d1 = torch.zeros_like(x0) if math.isinf(h_prev) else (x0 - x0_preds[-2]) * (h / h_prev)
            expected = (s_next / s) * expected - (1 - s_next) * (decay - 1) * (x0 + 0.5 * d1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_unipc_first_step_matches_the_formula() -> None:
    """UniPC's first step (order-1 predictor, bh2, predict x0) is x' = (s'/s) x - a' expm1(-h) x0."""
    scheduler = make_scheduler("unipc", 5.0)
    scheduler.set_timesteps(10)
    s, s_next = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 3, 3, generator=gen)
    v = torch.randn(1, 4, 2, 3, 3, generator=gen)
    got = scheduler.step(v, scheduler.timesteps[0], x, return_dict=False)[0]
    x0 = x.double() - s * v.double()
    h = _lam(s_next) - _lam(s)
    expected = (s_next / s) * x.double() - (1 - s_next) * math.expm1(-h) * x0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_solver"):
        make_scheduler("lcm", 5.0)  # type: ignore[arg-type]


def test_euler_grid_is_the_step_distillation_list() -> None:
    """LightX2V's 4-step distillation: denoising_step_list [1000, 750, 500, 250], sample_shift 5; the transformer sees
    1000 * shift(t / 1000), unrounded, and the last step lands on sigma 0."""
    scheduler = make_scheduler("euler", 5.0)
    scheduler.set_timesteps(4, device="cpu")
    expected = [shifted(t / 1000, 5.0) for t in (1000, 750, 500, 250)]  # 1, 15/16, 5/6, 5/8
    assert expected[:2] == [1.0, 0.9375] and expected[3] == 0.625 and abs(expected[2] - 5 / 6) < 1e-15
    np.testing.assert_array_equal(scheduler.sigmas.numpy(), np.array(expected + [0.0], dtype=np.float32))
    assert scheduler.timesteps.dtype == torch.float32
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), np.array([1000 * s for s in expected], dtype=np.float32))
    assert scheduler.timesteps[1].item() == 937.5  # the dpm++ path would truncate this to 937


@pytest.mark.parametrize("steps,shift", [(1, 5.0), (8, 5.0), (6, 3.0)])
def test_euler_grid_for_other_step_counts(steps: int, shift: float) -> None:
    scheduler = make_scheduler("euler", shift)
    scheduler.set_timesteps(steps)
    expected = [shifted(1 - i / steps, shift) for i in range(steps)] + [0.0]
    np.testing.assert_array_equal(scheduler.sigmas.numpy(), np.array(expected, dtype=np.float32))


def test_euler_steps_are_x_plus_dsigma_v_and_end_at_the_x0_estimate() -> None:
    scheduler = make_scheduler("euler", 5.0)
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 2, 3, 3, generator=gen)
    velocities = [torch.randn(1, 4, 2, 3, 3, generator=gen) for _ in range(4)]
    sig = [1.0, 0.9375, 5 / 6, 0.625, 0.0]
    got, expected = x.clone(), x.double()
    for i, t in enumerate(scheduler.timesteps):
        got = scheduler.step(velocities[i], t, got, return_dict=False)[0]
        expected = expected + (sig[i + 1] - sig[i]) * velocities[i].double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    # The last step (to sigma 0) is the x0 estimate x - sigma v, LightX2V's final update.
    scheduler.set_timesteps(1)
    torch.testing.assert_close(scheduler.step(velocities[0], scheduler.timesteps[0], x)[0], x - velocities[0])
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(velocities[0], scheduler.timesteps[0], x)
