"""APGD, APGD-T and the AutoAttack-style ensemble: the paper's math by hand, properties, strength, survivors."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import attacks
from attacks import APGD, APGDDLR, APGDT, PGD, AttackResult, AutoAttack, dlr, masking_warnings, targeted_dlr
from attacks.apgd import checkpoints
from test_attacks_models import mnist_test, random_batch, tiny_cnn, trained_mlp


class Scaled(nn.Module):
    """The model with its logits multiplied by k: same decisions, a softmax saturated to exact 0/1 in float32."""

    def __init__(self, model: nn.Module, k: float):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x) * self.k


def test_apgd_beats_fixed_step_pgd_where_its_gradient_vanishes():
    """Logits x 10^4 (Carlini & Wagner 2016's defensive-distillation trick): CE's gradient underflows to 0 on
    confident samples, so PGD-CE stalls at the clean accuracy; APGD on the scale-free DLR loss does not."""
    model = Scaled(trained_mlp(), 1e4)
    x, y = mnist_test(200)
    clean = (model(x).argmax(1) == y).float().mean().item()
    pgd = PGD(steps=20, seed=0)(model, x, y, eps=0.1)
    apgd = APGDDLR(steps=20, seed=0)(model, x, y, eps=0.1)
    pgd_acc, apgd_acc = 1 - pgd.success.float().mean().item(), 1 - apgd.success.float().mean().item()
    assert apgd.grad_steps <= pgd.grad_steps  # equal budget: 20 steps each, APGD stops early on fooled samples
    assert pgd_acc > clean - 0.05, "the setting must make PGD stall"
    assert apgd_acc < clean - 0.5, (pgd_acc, apgd_acc)
    unscaled = APGDDLR(steps=20, seed=0)(trained_mlp(), x, y, eps=0.1)
    assert torch.equal(unscaled.success, apgd.success)  # DLR is blind to the scale


def test_checkpoints_follow_the_papers_p_j():
    # p = 0, .22, .41 (= .22 + .19), .57 (+.16), .70 (+.13), .80 (+.10), .87 (+.07), .93 (+.06), .99 (+.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]  # ceil(2.2), ceil(4.1), ceil(5.7), ...
    assert checkpoints(1) == []


def test_dlr_losses_by_hand():
    z = torch.tensor([[5.0, 1.0, 3.0, 0.0], [1.0, 4.0, 2.0, 3.5]])
    y = torch.tensor([0, 2])
    # row 0: -(5 - 3) / (5 - 1) ; row 1: sorted 4, 3.5, 2, 1: -(2 - 4) / (4 - 2)
    assert torch.allclose(dlr(z, y), torch.tensor([-0.5, 1.0]))
    t = torch.tensor([1, 3])
    # row 0: -(5 - 1) / (5 - (1 + 0) / 2) ; row 1: -(2 - 3.5) / (4 - (2 + 1) / 2)
    assert torch.allclose(targeted_dlr(z, y, t), torch.tensor([-4 / 4.5, 1.5 / 2.5]))
    assert torch.allclose(dlr(1000 * z + 7, y), dlr(z, y))


class Linear(nn.Module):
    def __init__(self, d: int, classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(classes, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(classes, generator=g, dtype=torch.float64)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_two_apgd_steps_on_a_linear_model_match_the_formula(norm):
    """x1 = P(x0 + eta s(g0)), x2 = P(x1 + 0.75 (P(x1 + eta s(g1)) - x1) + 0.25 (x1 - x0)), eta = 2 eps;
    the result is the iterate of highest CE (no checkpoint halves eta: the loss rises)."""
    model = Linear(16, 5)
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    eps = 0.01 if norm == "linf" else 0.04

    def grad(v):  # d CE / dx = W^T (softmax(z) - onehot(y))
        p = torch.softmax(model(v), 1) - F.one_hot(y, 5)
        return (p @ model.w).view_as(v)

    def s(gv):
        return gv.sign() if norm == "linf" else gv / gv.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def project(v):
        d = v - x
        if norm == "linf":
            d = d.clamp(-eps, eps)
        else:
            d = d * (eps / d.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        return (x + d).clamp(0, 1)

    def ce(v):
        return F.cross_entropy(model(v), y, reduction="none")

    x1 = project(x + 2 * eps * s(grad(x)))
    x2 = project(x1 + 0.75 * (project(x1 + 2 * eps * s(grad(x1))) - x1) + 0.25 * (x1 - x))
    assert (ce(x1) > ce(x)).all()
    fooled1, fooled2 = model(x1).argmax(1) != y, model(x2).argmax(1) != y
    # the result: the first iterate that fools the model, else the one of highest CE
    best = torch.where((ce(x2) > ce(x1)).view(-1, 1, 1, 1), x2, x1)
    first_fooled = torch.where(fooled1.view(-1, 1, 1, 1), x1, torch.where(fooled2.view(-1, 1, 1, 1), x2, best))
    for steps, expected, expected_success in [(1, x1, fooled1), (2, first_fooled, fooled1 | fooled2)]:
        x_adv, success, grad_steps = APGD(norm=norm, steps=steps).run(model, x, y, None, eps, None,
                                                                       start=torch.zeros_like(x))
        assert torch.allclose(x_adv, expected, atol=1e-12) and torch.equal(success, expected_success)
        assert grad_steps == 6 * steps  # gradients at x0 .. x_{N-1}; the last iterate is only evaluated
    if norm == "l2":
        assert (ce(x2) > ce(x1)).all() and not torch.allclose(x2, x1)  # the momentum step is exercised


CASES = [APGD(seed=0, steps=10), APGDDLR(seed=0, steps=10), APGDT(seed=0, steps=5, targets=2),
         APGD(norm="l2", seed=0, steps=10), APGDT(norm="l2", seed=0, steps=5, targets=2),
         AutoAttack(steps=10, targets=2, queries=100, seed=0), AutoAttack(norm="l2", steps=10, targets=2, seed=0)]


@pytest.mark.parametrize("attack", CASES, ids=lambda a: f"{type(a).__name__}-{a.norm}")
def test_results_stay_in_the_ball_and_bounds(attack):
    model = tiny_cnn()
    x, y = random_batch(12, model=model)
    eps = [0.0, 0.05, 0.2] if attack.norm == "linf" else [0.0, 0.5, 2.0]
    result = attack(model, x, y, eps=eps)
    assert result.x_adv.shape == (3, *x.shape) and result.success.shape == (3, 12)
    assert result.x_adv.dtype == x.dtype and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    delta = (result.x_adv - x).flatten(2)
    size = delta.norm(dim=2) if attack.norm == "l2" else delta.abs().amax(2)
    for k, e in enumerate(eps):
        assert (size[k] <= e + 1e-6).all()
    assert torch.equal(result.x_adv[0], x) and not result.success[0].any()
    assert (result.success[1] <= result.success[2]).all()  # a sample fooled in the small ball is fooled in the large
    assert result.success[2].any() and result.grad_steps > 0
    with torch.no_grad():
        wrong = model(result.x_adv.flatten(0, 1)).argmax(1).view(3, 12) != y
    assert torch.equal(result.success, wrong)
    single = attack(model, x, y, eps=eps[1])
    assert single.x_adv.shape == x.shape and single.success.shape == (12,)


def test_apgd_t_attacks_the_top_classes_in_turn():
    """APGD-T with one target is targeted-DLR APGD against the most likely class other than y (same seed, same run)."""
    model = trained_mlp()
    x, y = mnist_test(20)
    second = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    top1 = APGDT(steps=8, targets=1, seed=3)(model, x, y, eps=0.1)
    by_hand = APGD(steps=8, loss="dlr", seed=3)
    generator = torch.Generator().manual_seed(3)
    x_adv, success, _ = by_hand.run(model, x, y, second, 0.1, generator)
    assert torch.equal(top1.x_adv, x_adv) and torch.equal(top1.success, success) and success.any()


def test_explicit_targets_are_reached():
    model = trained_mlp()
    x, y = mnist_test(20)
    target = (y + 1) % 10
    result = APGD(steps=30, seed=0)(model, x, y, eps=0.2, target=target)
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) == target)
    assert result.success.float().mean() > 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "margin"}, "loss must be one of ce, dlr"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"targets": -1}, "targets must be an integer >= 0"),
    ({"norm": "l1"}, "norm must be one of linf, l2"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APGD(**kwargs)


def test_bad_calls_are_refused():
    model = tiny_cnn(classes=3)
    x, y = random_batch(4, model=model)
    with pytest.raises(ValueError, match="at most classes - 1 = 2"):
        APGDT(targets=3)(model, x, y, eps=0.1)
    with pytest.raises(ValueError, match="targeted DLR loss needs a model with at least 4 classes"):
        APGD(loss="dlr")(model, x, y, eps=0.1, target=(y + 1) % 3)
    with pytest.raises(ValueError, match="APGD-T picks its own targets"):
        APGDT()(tiny_cnn(), *random_batch(4, model=tiny_cnn()), eps=0.1, target="random")
    with pytest.raises(ValueError, match="AutoAttack is untargeted"):
        AutoAttack()(tiny_cnn(), *random_batch(4, model=tiny_cnn()), eps=0.1, target="random")
    with pytest.raises(ValueError, match="version must be one of standard, reference, fast"):
        AutoAttack(version="quick")
    with pytest.raises(ValueError, match="queries must be an integer >= 1 or None"):
        AutoAttack(queries=0)
    with pytest.raises(ValueError, match="the L2 ensemble has no Square"):
        AutoAttack(norm="l2", queries=100)
    assert AutoAttack(version="fast", targets=5).budget == attacks.autoattack.Budget(25, 5, 500)
    assert AutoAttack(version="reference").budget == attacks.autoattack.Budget(100, 9, 5000)  # Croce & Hein's


def test_registry_names():
    assert isinstance(attacks.make_attack("apgd-ce"), APGD) and isinstance(attacks.make_attack("APGD-T"), APGDT)
    assert isinstance(attacks.make_attack("auto"), AutoAttack) and attacks.make_attack("apgd-dlr").loss == "dlr"


class FoolEvery(nn.Module):
    """Stands in for an attack: records the sample ids (pixel 1 = id / 100) it is given and fools those whose
    id is in `ids` by setting pixel 0 (which alone decides the class) to the next class."""

    def __init__(self, ids, log):
        super().__init__()
        self.ids, self.log = set(ids), log

    def __call__(self, model, x, y, eps):
        sample = (x.flatten(1)[:, 1] * 100).round().long()
        self.log.append(sample.tolist())
        hit = torch.tensor([int(i) in self.ids for i in sample])
        x_adv = x.clone()
        x_adv.flatten(1)[hit, 0] = ((y[hit] + 1) % 10).float() / 10 + 0.05
        return AttackResult(x_adv, hit, grad_steps=len(sample))


class PixelClassifier(nn.Module):
    """Class = floor(10 * pixel 0)."""

    def forward(self, x):
        return F.one_hot((x.flatten(1)[:, 0] * 10).long().clamp(0, 9), 10).float()


def test_the_ensemble_attacks_only_the_survivors(monkeypatch):
    n = 12
    x = torch.zeros(n, 1, 2, 2)
    y = torch.arange(n) % 10
    x.flatten(1)[:, 0] = y.float() / 10 + 0.05
    x.flatten(1)[:, 1] = torch.arange(n).float() / 100
    x.flatten(1)[:2, 0] = 0.95  # samples 0 and 1 are misclassified already (class 9; y is 0 and 1)
    log = {"apgd-ce": [], "apgd-t": [], "square": []}
    fakes = [("apgd-ce", FoolEvery({2, 3, 4}, log["apgd-ce"])), ("apgd-t", FoolEvery({5, 0}, log["apgd-t"])),
             ("square", FoolEvery({6}, log["square"]))]
    monkeypatch.setattr(AutoAttack, "parts", lambda self, classes: fakes)
    result = AutoAttack()(PixelClassifier(), x, y, eps=[0.1, 0.3])
    assert log["apgd-ce"][0] == list(range(2, n))  # the clean errors are never attacked
    assert log["apgd-t"][0] == [i for i in range(2, n) if i not in (2, 3, 4)]
    assert log["square"][0] == list(range(6, n))
    assert log["apgd-ce"][1] == list(range(7, n))  # the larger eps starts from the smaller one's survivors
    assert result.success[0].tolist() == [i < 7 for i in range(n)]
    assert result.info["fooled_by"] == {"apgd-ce": [3, 0], "apgd-t": [1, 0], "square": [1, 0]}
    assert result.info["clean_errors"] == 2
    assert any("black-box attack fooled 1 of 12" in w for w in result.info["warnings"])


def test_masking_warnings():
    flat = masking_warnings([0.0, 0.1, 0.2], [0.9, 0.5, 0.5], n=100)
    assert len(flat) == 1 and "does not fall from eps=0.1" in flat[0]
    assert masking_warnings([0.1, 0.15], [0.5, 0.5], n=100) == []  # eps grew by less than 2x
    assert masking_warnings([0.1, 0.2], [0.5, 0.3], n=100, blackbox_only=[0, 0]) == []
    assert masking_warnings([0.1, 0.2], [0.0, 0.0], n=100) == []  # nothing left to fall
    assert len(masking_warnings([0.1], [0.5], n=100, blackbox_only=[1])) == 1
    assert masking_warnings([0.1], [0.5], n=1000, blackbox_only=[1]) == []  # under 1% of the images


class Quantized(nn.Module):
    """Bit-depth reduction in front of a model: torch.round has zero gradient, the textbook gradient masking."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def test_auto_flags_black_box_success_where_white_box_fails():
    x, y = mnist_test(60)
    auto = AutoAttack(steps=20, targets=2, queries=300, seed=0)
    masked = auto(Quantized(trained_mlp()), x, y, eps=0.2)
    plain = auto(trained_mlp(), x, y, eps=0.2)
    by = {name: counts[0] for name, counts in masked.info["fooled_by"].items()}
    assert by["square"] > 20 and by["square"] > 2 * (by["apgd-ce"] + by["apgd-t"])  # gradients lead nowhere
    assert any("black-box attack fooled" in w for w in masked.info["warnings"])
    assert plain.info["warnings"] == [] and plain.success.float().mean() > 0.5
    ra = attacks.robust_accuracy(Quantized(trained_mlp()), auto, x, y, [0, 0.2])
    assert ra.fooled_by["square"][1] == masked.info["fooled_by"]["square"][0]
    assert any("black-box" in w for w in ra.warnings) and math.isclose(ra.accuracy[1],
                                                                         1 - masked.success.float().mean().item())


def test_workers_attack_batches_at_once_with_the_same_figures():
    x, y = mnist_test(90)
    model = trained_mlp()
    auto = AutoAttack(steps=10, targets=2, queries=100, seed=3)
    threads = torch.get_num_threads()
    one = attacks.robust_accuracy(model, auto, x, y, [0, 0.03, 0.05], batch_size=25)
    two = attacks.robust_accuracy(model, auto, x, y, [0, 0.03, 0.05], batch_size=25, workers=2)
    assert 0 < one.accuracy[2] < one.accuracy[1] < one.accuracy[0]  # a curve that moves, so equality means something
    for key in ("accuracy", "clean_accuracy", "grad_steps", "queries", "fooled_by", "warnings"):
        assert one[key] == two[key], key
    assert torch.get_num_threads() == threads  # shared out while the workers ran, given back after
    unseeded = AutoAttack(steps=10, targets=2, queries=100)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(attacks.robust_accuracy(model, unseeded, x, y, [0.1], batch_size=25, workers=3))
    assert runs[0].accuracy == runs[1].accuracy and runs[0].queries == runs[1].queries
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            attacks.robust_accuracy(model, auto, x, y, [0.1], workers=bad)


def test_fold_batchnorm_keeps_the_function_with_fewer_layers():
    from attacks.core import fold_batchnorm
    from rlab.vision.models import build_model

    torch.manual_seed(0)
    model = build_model("fastnet", 10, 3, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # trained-looking statistics, not the identity of a fresh layer
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(8, 3, 32, 32)
    folded = fold_batchnorm(model)
    count = lambda net: sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # noqa: E731
    assert count(model) == 7 and count(folded) == 0  # after a conv, and after conv -> max-pool
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    # a negative scale does not commute with max-pooling: that batch norm stays, the others fold
    model.net[3][2].weight.data[0] = -1.0
    folded = fold_batchnorm(model)
    assert count(folded) == 1 and count(model) == 7
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert fold_batchnorm(model.train()) is model  # training mode: batch statistics, nothing to fold
    plain = trained_mlp()
    assert fold_batchnorm(plain.eval()) is plain
