import pytest
import torch
import torch.nn as nn

import rlab.vision.models as models
from rlab.errors import UserError
from rlab.vision.models import MODEL_NAMES, PYTORCHCV_MODELS, Normalize, NormalizedModel, build_model


def test_normalize_by_hand_values():
    norm = Normalize(mean=(0.5, 0.25), std=(0.25, 0.5))
    x = torch.tensor([[[[0.75]], [[1.0]]]])  # one 1x1 image, two channels
    out = norm(x)
    assert out.flatten().tolist() == pytest.approx([(0.75 - 0.5) / 0.25, (1.0 - 0.25) / 0.5])  # [1.0, 1.5]
    assert set(dict(norm.named_buffers())) == {"mean", "std"}


def test_normalized_model_feeds_the_net_normalised_images():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)

    model = NormalizedModel(Spy(), mean=(0.1307,), std=(0.3081,))
    x = torch.full((1, 1, 2, 2), 0.4388)
    model(x)
    assert seen["x"] == pytest.approx(torch.full((1, 1, 2, 2), (0.4388 - 0.1307) / 0.3081), abs=1e-6)
    assert "normalize.mean" in model.state_dict()
    with pytest.raises(ValueError, match="std > 0"):
        Normalize((0.5,), (0.0,))


def test_default_statistics_by_channels():
    assert build_model("mnist_cnn", 10, 1, 28).normalize.mean.flatten().tolist() == pytest.approx([0.1307])
    assert build_model("fastnet", 10, 3, 32).normalize.std.flatten().tolist() == pytest.approx(list(models.CIFAR10_STD))
    assert build_model("resnet20_cifar10").normalize.std.flatten().tolist() == pytest.approx(list(models.PYTORCHCV_STD))


@pytest.mark.parametrize("name", sorted(PYTORCHCV_MODELS))
def test_every_pytorchcv_model_builds_and_gives_logits(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert logits[0].std() > 0  # a real network, not a constant


@pytest.mark.parametrize("name, shape", [("mnist_cnn", (1, 28, 28)), ("fastnet", (3, 32, 32)),
                                         ("fastnet_wide", (3, 32, 32)), ("mnist_cnn", (3, 20, 20)),
                                         ("mnist_small", (1, 28, 28))])
def test_lab_models_give_logits_and_gradients(name, shape):
    model = build_model(name, num_classes=7, in_channels=shape[0], image_size=shape[1])
    x = torch.rand(3, *shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, 7)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0


def test_model_names_and_bad_arguments():
    assert {"mnist_cnn", "fastnet", "resnet20_cifar10", "resnet56_cifar10", "resnet110_cifar10",
            "preresnet20_cifar10", "seresnet20_cifar10", "densenet40_k12_cifar10"} <= set(MODEL_NAMES)
    with pytest.raises(UserError, match="Did you mean 'resnet20_cifar10'"):
        build_model("resnet20_cifar")
    with pytest.raises(UserError, match="32x32"):
        build_model("resnet20_cifar10", 10, 1, 28)
    with pytest.raises(UserError, match="num_classes must be an integer >= 2"):
        build_model("fastnet", num_classes=1)
    with pytest.raises(UserError, match="only the pytorchcv models"):
        build_model("fastnet", pretrained=True)


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_online", lambda *a, **k: False)
    with pytest.raises(UserError, match="offline"):
        build_model("resnet20_cifar10", pretrained=True)


def test_model_store_import_needs_no_torchvision():
    import subprocess
    import sys

    code = ("import sys; import pytorchcv.models.common.model_store, rlab.vision.models; "
            "rlab.vision.models.build_model('resnet20_cifar10'); assert 'torchvision' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_pool_to_is_adaptive_average_pooling_that_skips_the_identity():
    pool, reference = models.PoolTo(7), nn.AdaptiveAvgPool2d(7)
    at_size, larger = torch.randn(3, 4, 7, 7), torch.randn(3, 4, 15, 12)
    assert pool(at_size) is at_size  # no kernel call for the identity
    assert torch.equal(pool(larger), reference(larger)) and pool(larger).shape == (3, 4, 7, 7)
    assert torch.equal(models.PoolTo((7, 5))(larger), nn.AdaptiveAvgPool2d((7, 5))(larger))
    net = build_model("mnist_small", 10, 1, 28).eval()  # checkpoints of the nn.AdaptiveAvgPool2d version load
    old = build_model("mnist_small", 10, 1, 28).eval()
    inner = next(m for m in old.modules() if isinstance(m, nn.Sequential) and any(
        isinstance(c, models.PoolTo) for c in m))
    for i, child in enumerate(inner):
        if isinstance(child, models.PoolTo):
            inner[i] = nn.AdaptiveAvgPool2d(7)
    net.load_state_dict(old.state_dict(), strict=True)
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(net(x), old(x))
