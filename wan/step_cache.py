"""Step caching for the Wan-Animate transformer: skip most of a forward when its first block barely changed.

On a cached step the transformer runs its embeddings and DiT block 0 as usual; when block 0's residual (its output
minus its input) differs from the one of the last fully computed step by less than `threshold` (relative mean
absolute change, as diffusers' FirstBlockCache measures it), blocks 1..N-1 and all face adapters are skipped and
their combined residual from that computed step is added instead; the output norm and projection run as usual.

Written here rather than taken from diffusers' FirstBlockCache because that hook gives wrong outputs on this model:
the face adapters run between the blocks, outside the `blocks` list it caches, so a skipped step added their outputs
on top of a cached residual that already held them. Here the cached span is block 0's output up to the input of
`norm_out`: every block and face adapter after block 0, whatever the face-injection interval.

How: `installed(transformer, cache)` swaps thin wrapper modules in for the blocks, the face adapters and `norm_out`
for the length of one clip; the wrapped modules themselves (compiled, LoRA'd, offloaded) are called unchanged.
The loop calls `cache.begin_step(step, branch)` before each forward. Deciding needs one host sync per forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StepCacheOptions:
    """When a step may reuse the last computed step's residual.

    threshold: skip when mean|r0 - r0_ref| / mean|r0_ref| < threshold, where r0 is block 0's residual now and r0_ref
        at the last computed step (the drift is measured against the step the cache came from, so skipped steps
        cannot creep away from it unnoticed). 0 never skips. FirstBlockCache users run Wan 2.1 at about 0.05-0.1.
    warmup_fraction: the first steps of every clip (this fraction of them, at least one) always compute: early
        steps lay out the motion and change fastest.
    max_consecutive_skips: after this many skipped steps in a row the next one computes, whatever the change.
    The last step always computes.
    """

    threshold: float
    warmup_fraction: float = 0.2
    max_consecutive_skips: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"step cache threshold must be in [0, 1], not {self.threshold}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], not {self.warmup_fraction}")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, not {self.max_consecutive_skips}")

    def always_computes(self, step: int, num_steps: int) -> bool:
        """True for the warm-up steps and the last step of a `num_steps` schedule."""
        warmup_steps = max(1, round(self.warmup_fraction * num_steps))
        return step < warmup_steps or step == num_steps - 1


@dataclass
class _BranchState:
    """What one branch (cond / uncond) keeps from its last computed step."""

    head_residual: torch.Tensor | None = None  # [B, S, C] block 0's output - input
    stack_residual: torch.Tensor | None = None  # [B, S, C] norm_out's input - block 0's output
    consecutive_skips: int = 0


@dataclass
class StepCache:
    """Per-clip cache state, shared by the wrapper modules; `decisions` records (step, branch, skipped) in order."""

    options: StepCacheOptions
    num_steps: int
    branches: dict[str, _BranchState] = field(default_factory=dict)
    decisions: list[tuple[int, str, bool]] = field(default_factory=list)
    _step: int = -1
    _branch: str = "cond"
    _skipping: bool = False
    _head_output: torch.Tensor | None = None  # [B, S, C] block 0's output in the current forward

    @property
    def skipping(self) -> bool:
        """True between block 0 and norm_out of a forward that reuses the cached residual."""
        return self._skipping

    @property
    def skipped_steps(self) -> int:
        return sum(1 for _, _, skipped in self.decisions if skipped)

    def begin_step(self, step: int, branch: str) -> None:
        """Call before each transformer forward: `step` of the clip's `num_steps`, `branch` 'cond' or 'uncond'."""
        self._step, self._branch = step, branch
        self._skipping = False
        self._head_output = None

    def after_head(self, head_input: torch.Tensor, head_output: torch.Tensor) -> None:
        """Block 0 ran: decide whether the rest of this forward is skipped."""
        state = self.branches.setdefault(self._branch, _BranchState())
        head_residual = head_output - head_input
        skip = (
            self.options.threshold > 0.0
            and state.stack_residual is not None
            and state.consecutive_skips < self.options.max_consecutive_skips
            and not self.options.always_computes(self._step, self.num_steps)
            and relative_change(head_residual, state.head_residual) < self.options.threshold
        )
        if skip:
            state.consecutive_skips += 1
        else:
            state.head_residual = head_residual
            state.consecutive_skips = 0
        self._skipping = skip
        self._head_output = head_output
        self.decisions.append((self._step, self._branch, skip))

    def finish_stack(self, stack_output: torch.Tensor) -> torch.Tensor:
        """At norm_out's input: on a computed step remember the stack's residual and pass the output through; on a
        skipped step (where `stack_output` is block 0's output) return block 0's output + the cached residual."""
        if self._head_output is None:
            raise RuntimeError("StepCache: norm_out ran without block 0 (begin_step not called, or blocks unwrapped)")
        state = self.branches[self._branch]
        head_output, self._head_output = self._head_output, None
        if self._skipping:
            self._skipping = False
            return head_output.to(stack_output.dtype) + state.stack_residual.to(stack_output.dtype)
        # Kept in the blocks' dtype (bf16 in the app: half the memory of the float32 that norm_out receives).
        state.stack_residual = (stack_output - head_output.to(stack_output.dtype)).to(head_output.dtype)
        return stack_output


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    """mean|now - before| / mean|before| (one host sync)."""
    diff = (now.float() - before.float()).abs().mean()
    scale = before.float().abs().mean().clamp_min(1e-12)
    return (diff / scale).item()


class _CacheWrapper(torch.nn.Module):
    """A module of the transformer (`inner`, called unchanged) and the cache that decides whether it runs."""

    def __init__(self, inner: torch.nn.Module, cache: StepCache) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache


class _HeadBlock(_CacheWrapper):
    """Block 0: runs it and lets the cache decide about the rest of the forward."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.inner(hidden_states, *args, **kwargs)
        self.cache.after_head(hidden_states, out)
        return out


class _SkippableBlock(_CacheWrapper):
    """Blocks 1..N-1: passed through unchanged on a skipped step."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.cache.skipping:
            return hidden_states
        return self.inner(hidden_states, *args, **kwargs)


class _SkippableFaceAdapter(_CacheWrapper):
    """A face adapter (its output is ADDED to the tokens by the caller): adds nothing on a skipped step."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.cache.skipping:
            return hidden_states.new_zeros(())
        return self.inner(hidden_states, *args, **kwargs)


class _CacheTail(_CacheWrapper):
    """norm_out: its input is where the cached span ends."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.inner(self.cache.finish_stack(hidden_states))


@contextmanager
def installed(transformer: torch.nn.Module, cache: StepCache) -> Iterator[StepCache]:
    """Wrap the transformer's blocks, face adapters and norm_out for `cache` inside the block; restore them after.

    Refuses a context-parallel transformer: there block 0 splits the sequence, so its input and output differ in
    length on each rank, and ranks could decide differently.
    """
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ValueError("step caching does not combine with context parallelism")
    blocks = transformer.get_submodule("blocks")
    adapters = transformer.get_submodule("face_adapter")
    originals = (list(blocks), list(adapters), transformer.norm_out)
    for index, block in enumerate(originals[0]):
        blocks[index] = _HeadBlock(block, cache) if index == 0 else _SkippableBlock(block, cache)
    for index, adapter in enumerate(originals[1]):
        adapters[index] = _SkippableFaceAdapter(adapter, cache)
    transformer.norm_out = _CacheTail(originals[2], cache)
    try:
        yield cache
    finally:
        for index, block in enumerate(originals[0]):
            blocks[index] = block
        for index, adapter in enumerate(originals[1]):
            adapters[index] = adapter
        transformer.norm_out = originals[2]
