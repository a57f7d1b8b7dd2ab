import pytest
import torch
import torchvision
from torch import nn

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.layout import discover
from pneumo_fastai.errors import WeightsError
from pneumo_fastai.model import build_learner, build_model, layer4_splitter, xray_head
from pneumo_fastai.weights import load_body_weights, read_state_dict


def test_head_is_dropout_linear_relu_dropout_linear_after_average_pooling():
    head = xray_head()
    kinds = [type(m) for m in head]
    assert kinds == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU,
                     nn.Dropout, nn.Linear]  # fmt: skip
    assert (head[2].p, head[5].p) == (0.5, 0.25)
    assert (head[3].in_features, head[3].out_features, head[6].out_features) == (512, 256, 2)


def test_model_maps_an_image_batch_to_two_logits():
    model = build_model(TrainConfig()).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_splitter_groups_are_stem_to_layer3_layer4_and_head():
    model = build_model(TrainConfig())
    groups = layer4_splitter(model)
    assert len(groups) == 3
    ids = [{id(p) for p in g} for g in groups]
    assert ids[1] == {id(p) for p in model[0][7].parameters()}  # layer4
    assert ids[2] == {id(p) for p in model[1].parameters()}
    assert sum(map(len, ids)) == len(list(model.parameters()))


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "resnet34-local.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return path


@pytest.fixture
def dls(dataset):
    config = TrainConfig(data=dataset, size=32, bs=4, num_workers=0)
    return build_dataloaders(discover(dataset).files, config, device="cpu")


def test_pretrained_learner_loads_the_file_and_freezes_up_to_layer4(dls, weights_file):
    state = read_state_dict(weights_file)
    learn = build_learner(dls, TrainConfig(size=32), imagenet_state=state)
    body = learn.model[0]
    assert torch.equal(body[0].weight, state["conv1.weight"])
    assert torch.equal(body[6][0].conv1.weight, state["layer3.0.conv1.weight"])
    assert not body[0].weight.requires_grad and not body[6][0].conv1.weight.requires_grad
    assert body[6][0].bn1.weight.requires_grad, "fastai keeps BatchNorm trainable (train_bn)"
    assert all(p.requires_grad for p in body[7].parameters())
    assert all(p.requires_grad for p in learn.model[1].parameters())


def test_learner_from_scratch_trains_every_layer(dls):
    learn = build_learner(dls, TrainConfig(size=32, pretrained=False))
    assert all(p.requires_grad for p in learn.model.parameters())


def test_weights_that_do_not_fit_are_refused(dls, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit a ResNet34"):
        load_body_weights(build_model(TrainConfig())[0], read_state_dict(path))
