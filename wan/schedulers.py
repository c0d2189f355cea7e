"""The official Wan-Animate samplers (FlowDPM 'dpm++' and FlowUniPC 'unipc') on diffusers' own schedulers, and the
Euler sampler ('euler') of LightX2V's step-distillation LoRA.

diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler with `use_flow_sigmas` run the same update
rules as the official FlowDPMSolverMultistepScheduler / FlowUniPCMultistepScheduler (wan/utils/fm_solvers*.py);
only their sigma grids differ. The two subclasses below change nothing but `set_timesteps`, so that any caller
(our loop, or diffusers' WanAnimatePipeline in the tests) gets the official grid:

- dpm++ (official `get_sampling_sigmas`): s_i = linspace(1, 0, n + 1)[:n], shifted. It starts at sigma = 1
  exactly; diffusers' own flow grid starts at 0.999.
- unipc (official `FlowUniPCMultistepScheduler.set_timesteps`): s_i = linspace(sigma_max, 0, n + 1)[:n] with
  sigma_max = 0.999 read back from a float32 tensor, shifted. diffusers' UniPC grid is linspace(1, 0.001).

Both: shift(s) = shift * s / (1 + (shift - 1) * s), a final sigma of 0 appended, timesteps = int64(1000 * s)
(truncated, as official; the transformer sees these integer timesteps).

- euler (LightX2V's WanStepDistillScheduler, lightx2v/models/schedulers/wan/step_distill/scheduler.py, for its 4-step
  distillation LoRA): the dpm++ grid, i.e. the timesteps t_i = 1000 (1 - i / n) shifted (n = 4: its
  denoising_step_list [1000, 750, 500, 250] -> sigmas 1, 0.9375, 0.8333, 0.625), one Euler step of the flow ODE per
  forward down to sigma 0, and the UNtruncated timesteps 1000 * sigma (937.5, not 937) fed to the transformer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

Solver = Literal["dpm++", "unipc", "euler"]

NUM_TRAIN_TIMESTEPS = 1000
# Official FlowUniPC: sigma_max = sigmas[0].item() of a float32 tensor holding 1 - 1/1000.
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Flow-matching time shift (float64, as the official numpy code)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def official_dpm_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """(num_steps,) float64: the official get_sampling_sigmas(num_steps, shift) grid."""
    return shift_sigmas(np.linspace(1.0, 0.0, num_steps + 1)[:num_steps], shift)


def official_unipc_unshifted_sigmas(num_steps: int) -> np.ndarray:
    """(num_steps,) float64: the official FlowUniPC grid before the shift."""
    return np.linspace(UNIPC_SIGMA_MAX, 0.0, num_steps + 1)[:-1].copy()


class OfficialFlowDPMScheduler(DPMSolverMultistepScheduler):
    """diffusers' DPM-Solver++ (2nd order, flow prediction) on the official Wan 'dpm++' sigma grid."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **_):
        """Reset the solver state, then install the official grid (diffusers' set_timesteps takes no sigmas)."""
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device)
        sigmas = official_dpm_sigmas(num_inference_steps, self.config.flow_shift)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(sigmas)


class OfficialFlowUniPCScheduler(UniPCMultistepScheduler):
    """diffusers' UniPC (bh2, predict x0, flow prediction) on the official Wan 'unipc' sigma grid."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **_):
        """diffusers applies `flow_shift` to the sigmas given here, exactly like the official set_timesteps."""
        super().set_timesteps(device=device, sigmas=official_unipc_unshifted_sigmas(num_inference_steps))


class FlowEulerScheduler:
    """Euler steps of the flow ODE on the dpm++ sigma grid (LightX2V's step-distillation sampler, 'euler').

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i with sigma_n = 0. LightX2V's docs call it an LCM scheduler; with the
    noise estimate x + (1 - sigma) v the LCM update (re-noise the x0 estimate x - sigma v to sigma_{i+1}) is this same
    step. Same interface as the diffusers schedulers above: set_timesteps, timesteps, sigmas, step.
    """

    order = 1

    def __init__(self, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> None:
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.sigmas = torch.zeros(1)  # (n + 1,) float32 on the CPU, set by set_timesteps
        self.timesteps = torch.zeros(0)  # (n,) float32 on the device
        self.step_index = 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **_) -> None:
        sigmas = official_dpm_sigmas(num_inference_steps, self.shift)  # (n,) float64
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = (self.sigmas[:-1] * self.num_train_timesteps).to(device)  # float, not truncated
        self.step_index = 0

    def step(
        self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, return_dict: bool = False
    ) -> tuple[torch.Tensor]:
        """One Euler step in float32 (steps run in order; `timestep` is accepted for the common interface)."""
        if self.step_index >= len(self.timesteps):
            raise RuntimeError("all steps done; call set_timesteps again")
        sigma, sigma_next = self.sigmas[self.step_index].item(), self.sigmas[self.step_index + 1].item()
        prev_sample = sample.float() + (sigma_next - sigma) * model_output.float()
        self.step_index += 1
        return (prev_sample,)


def make_scheduler(
    solver: Solver, shift: float
) -> DPMSolverMultistepScheduler | UniPCMultistepScheduler | FlowEulerScheduler:
    """A fresh scheduler configured like the official one (call set_timesteps(steps, device) before use)."""
    if solver == "dpm++":
        # Official FlowDPMSolverMultistepScheduler defaults: order 2, dpmsolver++, midpoint, lower_order_final,
        # final sigma 0.
        return OfficialFlowDPMScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            solver_order=2,
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver++",
            solver_type="midpoint",
            lower_order_final=True,
            euler_at_final=False,
            final_sigmas_type="zero",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    if solver == "unipc":
        # Official FlowUniPCMultistepScheduler defaults: order 2, bh2, predict_x0, lower_order_final, final sigma 0.
        return OfficialFlowUniPCScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            solver_order=2,
            prediction_type="flow_prediction",
            predict_x0=True,
            solver_type="bh2",
            lower_order_final=True,
            disable_corrector=[],
            final_sigmas_type="zero",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    if solver == "euler":
        return FlowEulerScheduler(shift, NUM_TRAIN_TIMESTEPS)
    raise ValueError(f"unknown sample_solver {solver!r}; use 'dpm++', 'unipc' or 'euler'")
