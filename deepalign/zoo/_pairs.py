"""Pairs of zoo models as a ``torch.utils.data.Dataset``, the input of Deep-Align training."""
import numpy as np
from torch.utils.data import Dataset

from deepalign.zoo._reader import Zoo


class ZooPairs(Dataset):
    """Item ``i`` pairs model ``split[i]`` with a partner drawn from the same split.

    In an INR zoo with several views per image the partner is another view of the same image
    (the paper's multi-view pairs); otherwise any other model of the split. The partner
    depends only on ``(seed, epoch, i)``: a DataLoader sees the same pairs on every
    run, and :meth:`set_epoch` draws new partners. With ``weights=True`` an item is two state
    dicts, which the default DataLoader collation stacks into two batches of state dicts,
    ``{key: (batch, *param_shape)}``; otherwise it is the two model indices.

    Parameters
    ----------
    zoo : Zoo
    split : {"train", "val", "test"} or sequence of int
        Which models to pair (at least two).
    weights : bool
        Yield ``(state_dict_a, state_dict_b)`` instead of ``(index_a, index_b)``.
    seed : int
    """

    def __init__(self, zoo: Zoo, split="train", weights: bool = False, seed: int = 0):
        if isinstance(split, str):
            if split not in zoo.split:
                raise ValueError(f"split must be one of {sorted(zoo.split)}, got {split!r}")
            split = zoo.split[split]
        self.indices = [int(i) for i in split]
        if len(self.indices) < 2:
            raise ValueError(f"a pair needs two models, the split has {len(self.indices)}")
        # candidates[i]: positions in self.indices that item i may be paired with
        image = {r["index"]: r["image"] for r in zoo.records if "image" in r}
        if zoo.manifest["training"].get("views", 1) > 1:
            by_image = {}
            for pos, i in enumerate(self.indices):
                by_image.setdefault(image[i], []).append(pos)
            self._candidates = [[p for p in by_image[image[i]] if p != pos]
                                for pos, i in enumerate(self.indices)]
            lonely = [self.indices[pos] for pos, c in enumerate(self._candidates) if not c]
            if lonely:
                raise ValueError(f"models {lonely[:5]} have no other view of their image "
                                 "in the split")
        else:
            self._candidates = None
        self.zoo, self.weights, self.seed, self.epoch = zoo, bool(weights), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the partners for ``epoch`` (call once per epoch, like DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def pair(self, i: int) -> tuple:
        """The model indices ``(a, b)`` of item ``i``, ``a != b``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} pairs")
        i %= len(self)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self._candidates is not None:
            options = self._candidates[i]
            return self.indices[i], self.indices[options[rng.integers(len(options))]]
        j = rng.integers(len(self) - 1)
        return self.indices[i], self.indices[j + (j >= i)]

    def __getitem__(self, i: int):
        a, b = self.pair(i)
        if not self.weights:
            return a, b
        return self.zoo.state_dict(a), self.zoo.state_dict(b)
