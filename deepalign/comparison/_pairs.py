"""Held-out pairs of a zoo for evaluation."""
import torch


def held_out_pairs(zoo, n_pairs: int, split: str = "test", seed: int = 0) -> tuple:
    """Disjoint pairs of distinct networks from one split of a zoo, drawn with a fixed seed.

    Returns
    -------
    idx_a, idx_b : list of int
        Model indices; pair ``k`` is ``(idx_a[k], idx_b[k])``.
    """
    if split not in zoo.split:
        raise ValueError(f"split must be one of {sorted(zoo.split)}, got {split!r}")
    pool = zoo.split[split]
    if len(pool) < 2:
        raise ValueError(f"zoo {zoo.path}: split {split!r} holds {len(pool)} models; "
                         "evaluation needs at least 2")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    n = min(n_pairs, len(pool) // 2)
    chosen = [pool[i] for i in order[:2 * n]]
    return chosen[0::2], chosen[1::2]
