"""Exponential moving averages (EMA) of the weights, at one or several decays at once.

The decay follows diffusers' `EMAModel` with warmup (`use_ema_warmup=True`, the unconditional
example's setting), so a run with one decay averages exactly as the diffusers example does:

    decay(n) = min(max_decay, 1 - (1 + (n - 1) / inv_gamma) ** -power)   at optimizer step n >= 2; 0 at n = 1

Written here rather than taken from `EMAModel` because the best EMA length depends on the model
and the data and is only known after training (Karras et al. 2024, EDM2): a run keeps several
lengths, and `EMAModel` holds one. All averages are updated by one `torch._foreach_lerp_` over
every (average, parameter) pair; `EMAModel` runs one update per object and allocates a temporary
copy of the weights in each (bench/bench_train.py measures both).
"""

from contextlib import contextmanager
from typing import Iterable, Sequence

import torch


def ema_decay(step: int, max_decay: float, inv_gamma: float, power: float) -> float:
    """The decay used at optimizer step `step` (counted from 1)."""
    if step <= 1:
        return 0.0
    return min(max_decay, 1 - (1 + (step - 1) / inv_gamma) ** -power)


def unreached_decays(
    max_decays: Sequence[float], total_steps: int, inv_gamma: float, power: float
) -> tuple[float, list[float]]:
    """The warmup's decay at the run's last step, and the max decays at or above it: never reached within the run,
    they leave the warmup in charge throughout, so their averages come out identical (with power 3/4 a max decay
    of 0.999 is reached at step 10,000, 0.9999 at step 215,000)."""
    reached = ema_decay(total_steps, 1.0, inv_gamma, power)
    return reached, [decay for decay in max_decays if decay >= reached]


class EMA:
    """Averages of `model`'s parameters for each of `max_decays`; index 0 is the run's main EMA (exported, sampled)."""

    def __init__(
        self, model: torch.nn.Module, max_decays: Sequence[float], inv_gamma: float = 1.0, power: float = 0.75
    ):
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.max_decays = [float(decay) for decay in max_decays]
        self.inv_gamma, self.power = inv_gamma, power
        self.optimization_step = 0
        self.averages = [[parameter.detach().clone() for _, parameter in named] for _ in self.max_decays]

    def current_decays(self) -> list[float]:
        """The decay of each average at the last update."""
        return [ema_decay(self.optimization_step, decay, self.inv_gamma, self.power) for decay in self.max_decays]

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.Tensor]) -> None:
        """One optimizer step's update of every average: average += (1 - decay) * (parameter - average)."""
        parameters = list(parameters)
        self.optimization_step += 1
        weights = [1.0 - decay for decay in self.current_decays()]
        torch._foreach_lerp_(
            [average for averages in self.averages for average in averages],
            parameters * len(self.averages),
            [weight for weight in weights for _ in parameters],
        )

    @contextmanager
    def swapped_in(self, model: torch.nn.Module, index: int = 0):
        """`model` with average `index` in place of its weights, in eval mode, inside the block; as it was after."""
        parameters = list(model.parameters())
        trained = [parameter.detach().clone() for parameter in parameters]
        with torch.no_grad():
            torch._foreach_copy_(parameters, self.averages[index])
        try:
            with evaluating(model):
                yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(parameters, trained)

    # ----- checkpoints: the averages as named tensors, the counters as JSON -----

    def state(self) -> dict:
        """What a checkpoint stores besides the tensors (JSON)."""
        return {
            "max_decays": self.max_decays,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
            "optimization_step": self.optimization_step,
        }

    def check_state(self, state) -> None:
        """`state()` fits this EMA (the averages' tensors are checked against the model where they are read);
        ValueError if not."""
        if not isinstance(state, dict):
            raise ValueError(f"ema: expected an object, got {state!r}")
        decays = state.get("max_decays")
        if not isinstance(decays, list) or [float(decay) for decay in decays] != self.max_decays:
            raise ValueError(f"ema: holds averages for decays {decays}, this run tracks {self.max_decays}")
        step = state.get("optimization_step")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= 10**9:
            raise ValueError(f"ema: optimization_step must be a non-negative integer, got {step!r}")

    @torch.no_grad()
    def load_state(self, state: dict, averages: Sequence[dict[str, torch.Tensor]]) -> None:
        """Restore `state()` and one {parameter name: tensor} mapping per average, both checked first."""
        for own, stored in zip(self.averages, averages):
            torch._foreach_copy_(own, [stored[name].to(own[0].device) for name in self.names])
        self.optimization_step = state["optimization_step"]


@contextmanager
def evaluating(model: torch.nn.Module):
    """`model` in eval mode inside the block, in its earlier mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def sampling_weights(model: torch.nn.Module, ema, index: int = 0):
    """`model` with EMA `index` swapped in, or with its own weights without an EMA; in eval mode."""
    with ema.swapped_in(model, index) if ema is not None else evaluating(model):
        yield model
