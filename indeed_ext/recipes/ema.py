"""An exponential moving average (EMA) of a model's weights, as ASL's ModelEma.

After each optimizer step ``update(model)`` moves every floating-point entry of the
EMA copy's state dict (parameters, and buffers such as BatchNorm's running statistics)
towards the model's: ema = decay * ema + (1 - decay) * value. Other entries (integer
counters such as num_batches_tracked) are copied. ASL trains with decay 0.9997; the
copy starts as the model at construction and is evaluated next to it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model``, which must have the EMA copy's state-dict keys."""
        ema_state, state = self.module.state_dict(), model.state_dict()
        if ema_state.keys() != state.keys():
            raise ValueError("the model's state dict has other keys than the EMA copy's; pass the unwrapped model")
        floats = [key for key, value in ema_state.items() if value.is_floating_point()]
        if floats:
            torch._foreach_lerp_([ema_state[k] for k in floats], [state[k].detach() for k in floats], 1.0 - self.decay)
        for key, value in ema_state.items():
            if not value.is_floating_point():
                value.copy_(state[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
