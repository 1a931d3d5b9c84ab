"""`deepalign zoo import`: folders of .pt/.pth state dicts, including the authors' layout."""
import json

import pytest
import torch
from torch import nn

from deepalign.cli import main
from deepalign.models import CNN
from deepalign.zoo import Zoo, import_zoo, infer_arch


def _authors_net(seed):
    torch.manual_seed(seed)
    # the authors' FCNet: nn.Sequential of Linear/ReLU, so keys are seq.0, seq.2, seq.4
    seq = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    return {f"seq.{k}": v for k, v in seq.state_dict().items()}


@pytest.fixture
def authors_folder(tmp_path):
    src = tmp_path / "mnist_classifiers"
    paths = []
    for i in range(5):
        folder = src / f"input_{i}_seed_{i}"
        folder.mkdir(parents=True)
        sd = _authors_net(i)
        sd["label"] = {"test_loss": torch.tensor(0.1 * i), "test_acc": 0.9}
        torch.save(sd, folder / "checkpoint.pth")
        paths.append(f"/cortex/data/{src.name}/{folder.name}/checkpoint.pth")  # their machine
    split = {"train": paths[:3], "val": paths[3:4], "test": paths[4:]}
    (src / "mnist_splits.json").write_text(json.dumps(split))
    return src


def test_imports_the_authors_layout(authors_folder, tmp_path):
    zoo = import_zoo(str(authors_folder), str(tmp_path / "zoo"), dataset="mnist")
    assert zoo.config == {"arch": "mlp", "in_features": 12, "hidden": [6, 6], "out_features": 3}
    assert zoo.split == {"train": [0, 1, 2], "val": [3], "test": [4]}
    assert zoo.dataset == "mnist" and len(zoo) == 5
    for i in range(5):
        src = list(_authors_net(i).values())
        assert all(torch.equal(a, b) for a, b in zip(src, zoo.state_dict(i).values()))
    torch.testing.assert_close(zoo.metric("test_loss"), 0.1 * torch.arange(5, dtype=torch.float64))
    assert zoo.records[2]["file"] == "input_2_seed_2/checkpoint.pth"


def test_plain_folder_via_cli(tmp_path, capsys):
    src = tmp_path / "pts"
    src.mkdir()
    for i in range(4):
        torch.save(_authors_net(i), src / f"m{i}.pt")
    assert main(["zoo", "import", str(src), "--out", str(tmp_path / "z"), "--seed", "1"]) == 0
    assert "4/4 mlp models" in capsys.readouterr().out
    zoo = Zoo(tmp_path / "z")
    assert sorted(sum(zoo.split.values(), [])) == [0, 1, 2, 3]


def test_cnn_needs_an_explicit_arch(tmp_path):
    src = tmp_path / "cnns"
    src.mkdir()
    cnn = CNN(1, [4, 4], 10, image_size=(8, 8), pool=[0, 1])
    torch.save(cnn.state_dict(), src / "a.pt")
    with pytest.raises(ValueError, match="cannot infer the architecture"):
        import_zoo(str(src), str(tmp_path / "z"))
    zoo = import_zoo(str(src), str(tmp_path / "z"), arch=cnn.config)
    assert zoo.build_model().config == cnn.config


@pytest.mark.parametrize("payload, match", [
    (torch.zeros(3), "holds a Tensor, not a state dict"),
    ({"a.weight": torch.zeros(3, 12), "a.bias": torch.zeros(3), "note": "x"}, "not tensors"),
    ({"a.weight": torch.zeros(3, 11), "a.bias": torch.zeros(3)}, "tensor shapes"),
])
def test_bad_files_are_named(tmp_path, payload, match):
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"a.weight": torch.zeros(3, 12), "a.bias": torch.zeros(3)}, src / "a.pt")
    torch.save(payload, src / "b.pt")
    with pytest.raises(ValueError, match=f"b.pt.*{match}|{match}"):
        import_zoo(str(src), str(tmp_path / "z"))


def test_split_entry_without_a_file(authors_folder, tmp_path):
    split = json.loads((authors_folder / "mnist_splits.json").read_text())
    split["test"].append("/elsewhere/input_9/checkpoint.pth")
    (authors_folder / "mnist_splits.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="input_9/checkpoint.pth' matches no single file"):
        import_zoo(str(authors_folder), str(tmp_path / "z"))


def test_not_an_mlp_chain():
    with pytest.raises(ValueError, match="do not chain"):
        infer_arch({"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(3),
                    "b.weight": torch.zeros(2, 5), "b.bias": torch.zeros(2)})
