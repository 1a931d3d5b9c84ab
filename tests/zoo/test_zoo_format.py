"""The on-disk zoo: round trip through safetensors + manifest, and clear errors for bad files."""
import json
import os

import pytest
import torch

from deepalign.data import load_dataset
from deepalign.models import batched_forward
from deepalign.zoo import Zoo, ZooFormatError, evaluate_classifiers, plot_zoo

from _tiny_zoo import ARCH, tiny_zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    tiny_zoo(out)
    return out


@pytest.fixture
def copy_dir(zoo_dir, tmp_path):
    for name in os.listdir(zoo_dir):
        (tmp_path / name).write_bytes((zoo_dir / name).read_bytes())
    return tmp_path


def test_round_trip(zoo_dir):
    zoo = Zoo(zoo_dir)
    assert len(zoo) == 6 and zoo.config == ARCH and zoo.dataset == "digits"
    assert sorted(sum(zoo.split.values(), [])) == list(range(6))
    stacked = zoo.stacked()
    assert {k: tuple(v.shape) for k, v in stacked.items()} == {
        "layers.0.weight": (6, 8, 64), "layers.0.bias": (6, 8),
        "layers.1.weight": (6, 10, 8), "layers.1.bias": (6, 10)}
    for i in (0, 3, 5):
        sd = zoo.state_dict(i)
        assert all(torch.equal(sd[k], stacked[k][i]) for k in sd)
        zoo.build_model().load_state_dict(sd)
    picked = zoo.stacked([5, 1])
    assert torch.equal(picked["layers.1.bias"], stacked["layers.1.bias"][[5, 1]])
    assert zoo.stacked([])["layers.0.weight"].shape == (0, 8, 64)


def test_stored_metrics_match_the_stored_weights(zoo_dir):
    zoo = Zoo(zoo_dir)
    data = load_dataset("digits")
    loss, acc = evaluate_classifiers(zoo.build_model(), zoo.stacked(), data.X_test, data.y_test)
    torch.testing.assert_close(acc, zoo.metric("test_acc"))
    torch.testing.assert_close(loss, zoo.metric("test_loss"), rtol=1e-5, atol=1e-6)
    logits = batched_forward(zoo.build_model(), zoo.stacked([2]), data.X_test)
    assert logits.shape == (1, 360, 10)
    lrs = zoo.metric("lr")
    assert ((lrs >= 1e-3) & (lrs <= 1e-2)).all() and len(set(lrs.tolist())) == 6


def test_corrupt_shard_names_the_file(copy_dir):
    shard = copy_dir / "models-0000002-0000004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    zoo = Zoo(copy_dir)
    zoo.state_dict(0)  # other shards still load
    with pytest.raises(ZooFormatError, match="models-0000002-0000004.safetensors: SHA-256"):
        zoo.state_dict(3)


def test_truncated_shard_names_the_file(copy_dir):
    shard = copy_dir / "models-0000004-0000006.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ZooFormatError, match="models-0000004-0000006.safetensors: .*truncated"):
        Zoo(copy_dir).stacked()


def test_manifest_disagreeing_with_shards(copy_dir):
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["keys"] = manifest["keys"][:3]
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooFormatError, match="models-0000000-0000002.safetensors: keys"):
        Zoo(copy_dir).state_dict(0)


def test_missing_or_broken_manifest(copy_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ZooFormatError, match="manifest.json not found"):
        Zoo(empty)
    (copy_dir / "manifest.json").write_text("{\"format\": \"deepalign-zoo\", ")
    with pytest.raises(ZooFormatError, match="manifest.json: invalid JSON"):
        Zoo(copy_dir)


def test_missing_shard_names_the_file(copy_dir):
    os.unlink(copy_dir / "models-0000002-0000004.safetensors")
    with pytest.raises(ZooFormatError, match="models-0000002-0000004.safetensors: cannot read"):
        Zoo(copy_dir).stacked()


def test_out_of_range_index(zoo_dir):
    with pytest.raises(IndexError, match="model 6"):
        Zoo(zoo_dir).state_dict(6)


def test_metrics_plot_is_a_png(zoo_dir, tmp_path):
    path = plot_zoo(Zoo(zoo_dir), str(tmp_path / "metrics.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
