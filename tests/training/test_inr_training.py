"""Deep-Align on an INR zoo: pairs are views of one image, scored against that image."""
import pytest
import torch

from deepalign.evaluation import loss_barrier, squared_error
from deepalign.models import SIREN
from deepalign.training import BarrierValidator, TrainConfig, read_metrics, train
from deepalign.training._pairs import PartnerRule
from deepalign.training._task_data import task_data
from deepalign.zoo import TrainSettings, train_zoo


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    return train_zoo(str(tmp_path_factory.mktemp("inr") / "zoo"), "digits",
                     SIREN(2, [8, 8], 1).config, 24, TrainSettings(epochs=5), seed=1,
                     chunk_size=24, val=0.25, test=0.25, views=2, progress=False)


def test_partner_rule_stays_within_groups():
    groups = torch.tensor([0, 0, 0, 5, 5, 5])
    rule = PartnerRule(6, groups)
    first = torch.arange(6).repeat(50)
    second = rule.draw(first, torch.Generator().manual_seed(0))
    assert torch.equal(groups[first], groups[second]) and (first != second).all()
    assert set(second[first == 0].tolist()) == {1, 2}
    anyone = PartnerRule(6).draw(first, torch.Generator().manual_seed(0))
    assert (anyone != first).all() and (groups[anyone] != groups[first]).any()
    with pytest.raises(ValueError, match="same number"):
        PartnerRule(3, torch.tensor([0, 0, 1]))


def test_inr_task_data_holds_each_networks_image(inr_zoo):
    indices = inr_zoo.split["train"]
    task = task_data(inr_zoo, indices)
    image = {r["index"]: r["image"] for r in inr_zoo.records}
    assert task.per_network and task.y.shape == (len(indices), 64, 1)
    assert task.groups.tolist() == [image[i] for i in indices]
    # the zoo's own fit quality, recomputed against these targets
    net = inr_zoo.build_model()
    net.load_state_dict(inr_zoo.state_dict(indices[0]))
    with torch.no_grad():
        mse = squared_error(net(task.x), task.y[0]).mean()
    assert abs(float(mse) - inr_zoo.records[indices[0]]["mse"]) < 1e-5


def test_validator_pairs_views_and_scores_against_their_image(inr_zoo):
    val = inr_zoo.split["val"]
    task = task_data(inr_zoo, val)
    nets = inr_zoo.stacked(val)
    validator = BarrierValidator(nets, inr_zoo.spec(), inr_zoo.build_model(), task, n_pairs=5,
                                 n_points=3)
    image = {r["index"]: r["image"] for r in inr_zoo.records}
    a_idx = [val[(nets["layers.0.weight"] == w).flatten(1).all(1).nonzero().item()]
             for w in validator.a["layers.0.weight"]]
    b_idx = [val[(nets["layers.0.weight"] == w).flatten(1).all(1).nonzero().item()]
             for w in validator.b["layers.0.weight"]]
    assert all(image[i] == image[j] and i != j for i, j in zip(a_idx, b_idx))
    identity = {k: torch.arange(8).expand(5, 8) for k in inr_zoo.spec().perm_names}
    direct = loss_barrier(inr_zoo.build_model(), validator.a, validator.b,
                          (task.x, task.y[[val.index(i) for i in a_idx]]), n_points=3,
                          loss_fn=squared_error, targets_per_pair=True)
    assert validator.barrier(identity) == pytest.approx(float(direct.barrier.mean()))


@pytest.mark.slow
def test_train_on_an_inr_zoo(inr_zoo, tmp_path):
    config = TrainConfig(steps=3, batch_size=4, image_batch=16, eval_every=3,
                         checkpoint_every=3, val_pairs=4, val_points=3)
    train(inr_zoo, str(tmp_path), config=config, progress=False, plot=False, hidden=8,
          n_hidden=1, out_features=8)
    series = read_metrics(str(tmp_path))
    interpolation = torch.tensor([v for _, v in series["loss/interpolation"]])
    assert len(interpolation) == 3 and torch.isfinite(interpolation).all()
    assert [s for s, _ in series["val/barrier"]] == [3]
