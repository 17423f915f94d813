"""The papers' models (ResNet20, M-ResNet, Tiny-ImageNet CNN, iris MLP) at their native sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model, classifier_name, compatible
from raytune_periodic.models.resnet20 import BasicBlock
from raytune_periodic.regularizers import Placement, insert_regularizers

#: model → (native input shape, classes, placements that must find targets)
NATIVE = {
    "resnet20": ((3, 32, 32), 10, [("sign_flip", "block_bn"), ("auto_relu", "before_relu")]),
    "tiny_cnn": ((3, 64, 64), 25, [("dropout", "before_linear"), ("cliff_relu", "before_relu")]),
    "iris_mlp": ((4,), 3, [("dropout", "before_relu"), ("dropout", "head")]),
    # M-ResNet's native 227×227 costs seconds per step on CPU; 48×48 (FER2013) exercises the same
    # layers (the adaptive pool keeps fc1 at 256·6·6 for any input size)
    "mresnet": ((1, 48, 48), 7, [("dropout", "head"), ("gaussian_noise", "before_linear")]),
}


def _step(model: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    x, y = torch.randn(2, *shape), torch.tensor([0, classes - 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out = model(x)
    assert out.shape == (2, classes)
    nn.functional.cross_entropy(out, y).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_native_batch_steps_with_injection_points(name: str) -> None:
    torch.manual_seed(0)
    shape, classes, placements = NATIVE[name]
    model = build_model(name, shape, classes)
    assert classifier_name(model) in ("fc", "head.fc")
    regs = insert_regularizers(
        model, [Placement(k, w, name=f"r{i}") for i, (k, w) in enumerate(placements)]
    )
    assert len(list(regs)) >= len(placements)
    _step(model, shape, classes)


def test_resnet20_is_twenty_layers() -> None:
    model = build_model("resnet20", (3, 32, 32), 10)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    convs = [
        m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n
    ]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20
    assert [b.conv2.out_channels for b in blocks[::3]] == [16, 32, 64]
    assert sum(p.numel() for p in model.parameters()) < 300_000  # ≈ 0.27 M


def test_tiny_cnn_is_the_papers_cnn() -> None:
    model = build_model("tiny_cnn", (3, 64, 64), 200)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 384, 256]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3]
    assert convs[0].stride == (4, 4)
    lrn = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 2 and lrn[0].k == 2.0 and lrn[0].beta == 0.75
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [
        1024,
        1024,
        200,
    ]
    with pytest.raises(ConfigError, match="stride"):
        build_model("tiny_cnn", (3, 64, 64), 10, stride=9)


def test_iris_mlp_matches_the_paper() -> None:
    base = build_model("iris_mlp", (4,), 3)
    assert sum(p.numel() for p in base.parameters()) == 2499  # the paper's count
    bn = build_model("iris_mlp", (4,), 3, batchnorm=True)
    names = [n for n, _ in bn.features.named_children()]
    assert names == ["flatten", "fc1", "relu1", "bn1", "fc2", "relu2", "bn2"]  # BN after ReLU


def test_mresnet_options_and_batchnorm_targets() -> None:
    model = build_model("mresnet", (3, 32, 32), 7, filters=[8, 16], reps=[1, 2], hidden=32)
    assert not compatible("mresnet", (4,))
    assert isinstance(model.act, nn.PReLU)
    with pytest.raises(ConfigError, match=r"after_bn"):
        insert_regularizers(model, [Placement("sign_flip", "after_bn")])
    bn = build_model("mresnet", (3, 32, 32), 7, filters=[8, 16], reps=[1, 2], batchnorm=True)
    regs = insert_regularizers(bn, [Placement("sign_flip", "block_bn")])
    assert len(list(regs)) == 3  # one per ResBl
    _step(bn, (3, 32, 32), 7)
    with pytest.raises(ConfigError, match="reps"):
        build_model("mresnet", (3, 32, 32), 7, filters=[8, 16], reps=[1])


def test_resnet20_has_features_and_a_one_fc_head() -> None:
    """The surrogate paper's ResNet20: one FC layer after the pooled 64-dim z (Table 2)."""
    model = build_model("resnet20", (1, 28, 28), 7)
    assert isinstance(model.features, nn.Sequential) and isinstance(model.head, nn.Sequential)
    assert [n for n, _ in model.head.named_children()] == ["fc"]
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    assert classifier_name(model) == "head.fc"


def test_caffe_lenet_is_valid_padding_with_an_800_unit_z() -> None:
    """Caffe's LeNet on 28×28: 28→24→12→8→4, a 50×4×4 map, z of 800 units (Table 2)."""
    model = build_model("lenet", (1, 28, 28), 7, padding=0)
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 800)
    assert model.head.fc1.in_features == 800
    assert build_model("lenet", (1, 28, 28), 7).head.fc1.in_features == 50 * 7 * 7  # padded
    with pytest.raises(ConfigError) as err:
        build_model("lenet", (1, 8, 8), 10, padding=0)
    assert err.value.field == "model.options.padding"
