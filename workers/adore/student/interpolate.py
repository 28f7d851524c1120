"""Weight-space interpolation of a trained student with the student it started as (WiSE-FT).

theta(alpha) = (1 - alpha) * theta_start + alpha * theta_trained, over every floating-point weight
of the scoring model (the encoder and the grade head; the aux heads are a training aid, never
served, and stay as trained). theta_start is the student before this round's
training: the backbone with its seed-fitted head (a new bi-encoder) or the previous round's student
(distill.initFrom previous). A few hundred soft labels move the backbone away from what it knew;
part of the way back keeps both (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022).
alpha = 1 is the trained student unchanged.
"""
from __future__ import annotations

import torch


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the module's weights (state_dict), to blend with later."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def blend(module: torch.nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> None:
    """Load (1 - alpha) * start + alpha * end into the module; integer buffers come from end."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {alpha}")
    if start.keys() != end.keys():
        missing = sorted(set(start) ^ set(end))[:3]
        raise ValueError(f"cannot interpolate two students with different weights (e.g. {missing})")
    mixed = {}
    for k, e in end.items():
        s = start[k]
        if s.shape != e.shape:
            raise ValueError(f"cannot interpolate {k}: shaped {tuple(s.shape)} at the start, {tuple(e.shape)} trained")
        mixed[k] = torch.lerp(s.to(e.dtype), e, alpha) if e.is_floating_point() else e
    module.load_state_dict(mixed)
