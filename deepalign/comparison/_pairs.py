"""Held-out pairs of a zoo for evaluation."""
import torch


def held_out_pairs(zoo, n_pairs: int, split: str = "test", seed: int = 0) -> tuple:
    """Disjoint pairs of distinct networks from one split of a zoo, drawn with a fixed seed.

    In an INR zoo, a pair is two views (independent fits) of one image, the paper's INR
    setting: their interpolation is scored against that image.

    Returns
    -------
    idx_a, idx_b : list of int
        Model indices; pair ``k`` is ``(idx_a[k], idx_b[k])``.
    """
    if split not in zoo.split:
        raise ValueError(f"split must be one of {sorted(zoo.split)}, got {split!r}")
    pool = zoo.split[split]
    views = 1
    if zoo.fits_images:
        views = zoo.manifest["training"]["views"]
        if views < 2:
            raise ValueError(f"zoo {zoo.path}: INR pairs are two views of one image, but the "
                             "zoo fits each image once (train it with --views 2 or more)")
        pool = sorted({i // views for i in pool})  # images; views are i*views .. i*views+1
    if len(pool) < (1 if views > 1 else 2):
        raise ValueError(f"zoo {zoo.path}: split {split!r} holds too few models for one pair")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    if views > 1:
        chosen = [pool[i] for i in order[:n_pairs]]
        return [i * views for i in chosen], [i * views + 1 for i in chosen]
    n = min(n_pairs, len(pool) // 2)
    chosen = [pool[i] for i in order[:2 * n]]
    return chosen[0::2], chosen[1::2]
