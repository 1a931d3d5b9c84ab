"""Training checkpoints: one atomically written file, resumable after a kill.

``checkpoint.pt`` holds the aligner (its ``DeepAlign.save`` payload), the optimiser state, the
step reached, the best validation result so far and the trainer configuration. Nothing else
is needed to continue: the training pairs of step ``s`` are a function of ``(seed, s, rank)``.
"""
import os

import torch

from deepalign._io import save_atomic

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
_FORMAT = "deepalign.training/1"


def save_checkpoint(out: str, aligner, optimizer, step: int, best: dict, config: dict,
                    elapsed: float = 0.0) -> str:
    """Write ``out/checkpoint.pt`` atomically; returns its path.

    ``elapsed``: training wall time so far, in seconds (for ``time_limit`` across resumes).
    """
    path = os.path.join(out, CHECKPOINT)
    save_atomic({"format": _FORMAT, "step": step, "best": best, "config": config,
                 "elapsed": float(elapsed),
                 "layout": None if aligner.layout is None else aligner.layout.to_dict(),
                 "encoder": aligner.config.to_dict(),
                 "model": aligner.state_dict(), "optimizer": optimizer.state_dict()}, path)
    return path


def load_checkpoint(out: str, map_location="cpu"):
    """The checkpoint dict in ``out``, or None when there is none."""
    path = os.path.join(out, CHECKPOINT)
    if not os.path.exists(path):
        return None
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a deepalign training checkpoint")
    return payload
