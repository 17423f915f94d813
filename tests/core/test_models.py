"""Every registered model against every compatible bundled dataset, plus the registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raytune_periodic.data import load_dataset
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import MODELS, build_model, classifier_name, compatible, model_options

SHAPES = {"digits": (1, 8, 8), "iris": (4,)}
PAIRS = [(m, d) for m in MODELS.names() for d in SHAPES if compatible(m, SHAPES[d])]
BAD_PAIRS = [(m, d) for m in MODELS.names() for d in SHAPES if not compatible(m, SHAPES[d])]


@pytest.fixture(scope="module")
def bundled():
    return {name: load_dataset(name, seed=0) for name in SHAPES}


def test_pairs_cover_every_model():
    assert {m for m, _ in PAIRS} == set(MODELS.names())
    assert ("resnet18", "iris") in BAD_PAIRS and ("lenet", "iris") in BAD_PAIRS
    assert ("mlp", "iris") in PAIRS and ("mlp", "digits") in PAIRS


@pytest.mark.parametrize(("model_name", "dataset"), PAIRS)
def test_builds_trains_and_evaluates(model_name, dataset, bundled):
    torch.manual_seed(0)
    data = bundled[dataset]
    assert data.input_shape == SHAPES[dataset]
    model = build_model(model_name, data.input_shape, data.num_classes)
    x, y = data.train.tensors[0][:4], data.train.tensors[1][:4]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out = model(x)
    assert out.shape == (4, data.num_classes)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert model(x[:2]).shape == (2, data.num_classes)  # BN in train mode needs >= 2
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, data.num_classes)


@pytest.mark.parametrize(("model_name", "dataset"), BAD_PAIRS)
def test_incompatible_pair_is_config_error(model_name, dataset):
    with pytest.raises(ConfigError) as err:
        build_model(model_name, SHAPES[dataset], 3)
    assert err.value.field == "model.name"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model_name", ["lenet", "resnet18"])
def test_too_small_image_is_config_error(model_name):
    assert not compatible(model_name, (1, 4, 4))
    with pytest.raises(ConfigError, match="H, W >= 8") as err:
        build_model(model_name, (1, 4, 4), 10)
    assert err.value.field == "model.name"


@pytest.mark.parametrize("model_name", ["lenet", "resnet18"])  # resnet34: same stem code
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 48, 48), (3, 9, 11)])
def test_image_models_adapt_to_size_and_channels(model_name, shape):
    model = build_model(model_name, shape, 7)
    model.train()
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_resnet_stem_follows_input_size():
    small = build_model("resnet18", (1, 32, 32), 10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.in_channels == 1 and isinstance(small.maxpool, nn.Identity)
    large = build_model("resnet18", (3, 64, 64), 10)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    forced = build_model("resnet34", (3, 64, 64), 10, small_stem=True)
    assert forced.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("model_name", "shape", "expected"),
    [("mlp", (4,), "fc"), ("lenet", (1, 8, 8), "head.fc2"), ("resnet18", (1, 8, 8), "fc")],
)
def test_classifier_name(model_name, shape, expected):
    model = build_model(model_name, shape, 5)
    assert classifier_name(model) == expected
    classifier = model.get_submodule(expected)
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 5


def test_classifier_name_needs_a_linear():
    with pytest.raises(ValueError):
        classifier_name(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_mlp_structure(batchnorm):
    model = build_model("mlp", (1, 8, 8), 10, hidden=[32, 16], batchnorm=batchnorm)
    assert list(model.children())[-1] is model.fc
    kinds = [type(m) for m in model.features]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU] if batchnorm else [nn.Linear, nn.ReLU]
    assert kinds == [nn.Flatten, *block, *block]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 and relus[0] is not relus[1]
    assert model.fc.in_features == 16


def test_lenet_structure():
    model = build_model("lenet", (1, 8, 8), 10, batchnorm=True)
    names = dict(model.named_modules())
    assert {"head.fc1", "head.relu", "head.fc2"} <= set(names)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    z = model.features(torch.randn(2, 1, 8, 8))
    assert z.shape == (2, model.head.fc1.in_features)
    assert model.head.fc1.out_features == 500


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_model("vgg", (3, 32, 32), 10)
    assert err.value.field == "model.name"
    for name in MODELS.names():
        assert name in str(err.value)


def test_unknown_option_names_the_option():
    with pytest.raises(ConfigError) as err:
        build_model("mlp", (4,), 3, depth=3)
    assert err.value.field == "model.options.depth"
    assert "batchnorm" in str(err.value) and "hidden" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_model("lenet", (1, 8, 8), 10, hidden=[3])
    assert err.value.field == "model.options.hidden"


@pytest.mark.parametrize("hidden", ["512", [0], [3.5], 7])
def test_bad_option_value(hidden):
    with pytest.raises(ConfigError) as err:
        build_model("mlp", (4,), 3, hidden=hidden)
    assert err.value.field == "model.options.hidden"


def test_model_options():
    assert model_options("mlp") == {"hidden": (512, 512), "batchnorm": False}
    assert model_options("resnet18") == {"small_stem": None}
