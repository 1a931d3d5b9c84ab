"""ZooPairs: deterministic pairs of distinct models for Deep-Align training."""
import pytest
import torch
from torch.utils.data import DataLoader

from deepalign.zoo import Zoo, ZooPairs

from _tiny_zoo import tiny_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory.mktemp("pairs"), count=10, chunk_size=10)


def test_pairs_are_distinct_in_split_and_deterministic(zoo):
    pairs = ZooPairs(zoo, "train", seed=1)
    assert len(pairs) == len(zoo.split["train"]) == 8
    got = [pairs[i] for i in range(len(pairs))]
    assert all(a != b and a in zoo.split["train"] and b in zoo.split["train"] for a, b in got)
    assert [a for a, _ in got] == zoo.split["train"]
    assert got == [ZooPairs(Zoo(zoo.path), "train", seed=1)[i] for i in range(8)]
    pairs.set_epoch(1)
    assert [pairs[i] for i in range(8)] != got


def test_weights_collate_to_stacked_state_dicts(zoo):
    pairs = ZooPairs(zoo, [0, 1, 2, 3], weights=True)
    sd_a, sd_b = next(iter(DataLoader(pairs, batch_size=3)))
    assert sd_a["layers.0.weight"].shape == (3, 8, 64)
    a, b = pairs.pair(2)
    assert torch.equal(sd_a["layers.1.bias"][2], zoo.state_dict(a)["layers.1.bias"])
    assert torch.equal(sd_b["layers.1.bias"][2], zoo.state_dict(b)["layers.1.bias"])


def test_bad_split(zoo):
    with pytest.raises(ValueError, match="split must be one of"):
        ZooPairs(zoo, "holdout")
    with pytest.raises(ValueError, match="needs two models"):
        ZooPairs(zoo, [3])
    with pytest.raises(IndexError):
        ZooPairs(zoo, [0, 1])[2]
