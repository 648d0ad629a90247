"""White-box attacks: properties on tiny offline models, validation, robust accuracy, and a match against foolbox."""

import pytest
import torch
import torch.nn as nn

import attacks
from attacks import (BIM, DIFGSM, DIMIFGSM, FGSM, L2PGD, MIFGSM, PGD, Ensemble, GradientAttack, SquareAttack,
                     make_attack, robust_accuracy)
from test_attacks_models import mnist_test, random_batch, tiny_cnn, trained_mlp

WHITE_BOX = [FGSM, BIM, PGD, L2PGD, MIFGSM, DIFGSM, DIMIFGSM]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def norm_of(delta: torch.Tensor, attack) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if attack.norm == "l2" else flat.abs().amax(1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", WHITE_BOX, ids=lambda c: c.__name__)
def test_results_stay_in_the_ball_and_bounds(cls, device):
    model = tiny_cnn().to(device)
    x, y = random_batch(12, model=tiny_cnn())
    x, y = x.to(device), y.to(device)
    attack = cls(seed=0)
    eps = [0.0, 0.05, 0.2] if attack.norm == "linf" else [0.0, 0.5, 2.0]
    result = attack(model, x, y, eps=eps)
    assert result.x_adv.shape == (3, *x.shape)
    assert result.success.shape == (3, 12) and result.success.dtype == torch.bool
    assert result.x_adv.device == x.device and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    for k, e in enumerate(eps):
        assert (norm_of(result.x_adv[k] - x, attack) <= e + 1e-5).all()
    assert torch.equal(result.x_adv[0], x)
    assert not result.success[0].any()  # labels are the model's own answers
    assert result.grad_steps > 0
    with torch.no_grad():
        wrong = model(result.x_adv.flatten(0, 1)).argmax(1).view(3, 12) != y
    assert torch.equal(result.success, wrong)


def test_attacks_actually_fool_a_trained_model():
    model = trained_mlp()
    x, y = mnist_test(200)
    clean = (model(x).argmax(1) == y).float().mean()
    assert clean > 0.85
    for cls in [FGSM, BIM, PGD, MIFGSM]:
        result = cls(seed=0)(model, x, y, eps=0.15)
        accuracy = (~result.success).float().mean()
        assert accuracy < clean - 0.4, cls.__name__
    l2 = L2PGD(seed=0)(model, x, y, eps=1.5)
    assert (~l2.success).float().mean() < clean - 0.4


def test_single_eps_gives_unbatched_result_and_eps_zero_is_identity():
    model = tiny_cnn()
    x, y = random_batch(8, model=model)
    result = PGD(seed=1)(model, x, y, eps=0)
    assert result.x_adv.shape == x.shape and torch.equal(result.x_adv, x)
    assert result.grad_steps == 0 and not result.success.any()


def test_float64_model_gets_float64_results():
    model = tiny_cnn().double()
    x, y = random_batch(8, model=tiny_cnn())
    result = MIFGSM()(model, x.double(), y, eps=0.1)
    assert result.x_adv.dtype == torch.float64


@pytest.mark.parametrize("cls", [PGD, L2PGD, DIMIFGSM], ids=lambda c: c.__name__)
def test_same_seed_same_numbers(cls):
    model = tiny_cnn()
    x, y = random_batch(10, model=model)
    eps = 0.1 if cls is not L2PGD else 1.0
    a = cls(seed=3)(model, x, y, eps=eps)
    b = cls(seed=3)(model, x, y, eps=eps)
    c = cls(seed=4)(model, x, y, eps=eps)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)
    torch.manual_seed(5)
    d = cls()(model, x, y, eps=eps)
    torch.manual_seed(5)
    e = cls()(model, x, y, eps=eps)
    assert torch.equal(d.x_adv, e.x_adv)


def test_model_is_attacked_in_eval_mode_and_mode_restored():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(tiny_cnn(), Probe()).train()
    x, y = random_batch(4, model=tiny_cnn())
    PGD(steps=2)(model, x, y, eps=0.1)
    assert seen and not any(seen)
    assert model.training and model[1].training


def test_targeted_attacks_reach_their_targets():
    model = trained_mlp()
    x, y = mnist_test(100)
    target = (y + 1) % 10
    result = PGD(steps=20, seed=0)(model, x, y, eps=0.3, target=target)
    reached = model(result.x_adv).argmax(1) == target
    assert torch.equal(result.success, reached)
    assert reached.float().mean() > 0.8
    for mode in ["least-likely", "random"]:
        out = PGD(steps=20, seed=0, loss="margin")(model, x, y, eps=0.3, target=mode)
        assert out.success.float().mean() > 0.6, mode
    with pytest.raises(ValueError, match="target mode"):
        PGD()(model, x, y, eps=0.1, target="likely")
    with pytest.raises(ValueError, match="differ"):
        PGD()(model, x, y, eps=0.1, target=y)


def test_margin_loss_and_restarts_are_at_least_as_strong():
    model = trained_mlp()
    x, y = mnist_test(200)
    one = PGD(steps=5, seed=0)(model, x, y, eps=0.08).success.float().mean()
    three = PGD(steps=5, restarts=3, seed=0)(model, x, y, eps=0.08)
    assert three.success.float().mean() >= one
    assert three.grad_steps <= 3 * 5 * 200
    cw = PGD(steps=10, loss="margin", seed=0)(model, x, y, eps=0.1)
    assert cw.success.float().mean() > 0.3


@pytest.mark.parametrize("bad, error, match", [
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=1.5), ValueError, "eps"),
    (dict(eps=[0.1, "a"]), ValueError, "convert"),
    (dict(eps="0.1"), TypeError, "eps"),
    (dict(x=torch.full((4, 1, 8, 8), 2.0)), ValueError, "bounds"),
    (dict(x=torch.zeros(4, 1, 8, 8, dtype=torch.uint8)), TypeError, "floating"),
    (dict(x=torch.zeros(4)), ValueError, "shape"),
    (dict(y=torch.zeros(4)), TypeError, "integer"),
    (dict(y=torch.zeros(3, dtype=torch.int64)), ValueError, "shape"),
    (dict(y=torch.full((4,), 10)), ValueError, r"\[0, 9\]"),
    (dict(y=torch.full((4,), -1)), ValueError, ">= 0"),
])
def test_bad_inputs_are_rejected_with_a_clear_error(bad, error, match):
    model = tiny_cnn()
    args = dict(x=torch.rand(4, 1, 8, 8), y=torch.zeros(4, dtype=torch.int64), eps=0.1) | bad
    with pytest.raises(error, match=match):
        PGD()(model, args["x"], args["y"], eps=args["eps"])


def test_bad_options_and_names_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        PGD(steps=0)
    with pytest.raises(ValueError, match="norm"):
        GradientAttack(norm="l1")
    with pytest.raises(ValueError, match="loss"):
        PGD(loss="hinge")
    with pytest.raises(ValueError, match="Allowed: .*pgd"):
        make_attack("pgdd")
    assert isinstance(make_attack("DI-MI-FGSM", steps=3), DIMIFGSM)
    assert set(attacks.ATTACKS) >= {"fgsm", "bim", "pgd", "l2pgd", "mifgsm", "difgsm", "dimifgsm"}


def test_eps_list_reuses_smaller_eps_and_matches_separate_runs():
    model = trained_mlp()
    x, y = mnist_test(150)
    eps = [0.05, 0.1, 0.2]
    together = BIM(steps=5)(model, x, y, eps=eps)
    apart = [BIM(steps=5)(model, x, y, eps=e) for e in eps]
    for k in range(3):
        assert together.success[k].sum() >= apart[k].success.sum()
    assert (together.success[:-1] <= together.success[1:]).all()  # monotone in eps
    assert together.grad_steps < sum(r.grad_steps for r in apart)


def test_robust_accuracy_early_stop_gives_an_equal_or_lower_curve_for_less():
    model = trained_mlp()
    x, y = mnist_test(300)
    eps = [0.0, 0.05, 0.1, 0.15]
    fast = robust_accuracy(model, BIM(steps=5), x, y, eps, batch_size=128)
    slow = robust_accuracy(model, BIM(steps=5, early_stop=False), x, y, eps, batch_size=128, early_stop=False)
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert fast.accuracy[0] == pytest.approx(clean) == fast.clean_accuracy
    assert all(f <= s + 1 / 300 for f, s in zip(fast.accuracy, slow.accuracy))
    square = robust_accuracy(model, SquareAttack(max_queries=30, seed=0), x, y, eps, batch_size=128)
    assert all(a >= b for a, b in zip(square.accuracy, square.accuracy[1:])) and square.accuracy[-1] < clean
    assert square.queries > 0 and square.grad_steps == 0
    assert all(a >= b for a, b in zip(fast.accuracy, fast.accuracy[1:]))
    assert fast.accuracy[-1] < clean - 0.3
    assert fast.grad_steps < 0.8 * slow.grad_steps
    assert fast.as_dict()["eps"] == eps


def test_ensemble_averages_logits_and_can_be_attacked():
    a, b = tiny_cnn(0), tiny_cnn(1)
    x, _ = random_batch(6)
    ensemble = Ensemble([a, b], weights=[1, 3])
    assert torch.allclose(ensemble(x), 0.25 * a(x) + 0.75 * b(x), atol=1e-6)
    y = ensemble(x).argmax(1)
    result = PGD(seed=0)(ensemble, x, y, eps=0.3)
    assert result.success.any()
    with pytest.raises(ValueError, match="weights"):
        Ensemble([a, b], weights=[1])
    with pytest.raises(TypeError):
        Ensemble([])


def test_our_pgd_is_at_least_as_strong_as_foolbox_linf_pgd():
    import foolbox as fb

    model = trained_mlp()
    x, y = mnist_test(500)
    eps, steps = 0.08, 10
    alpha = 2.5 * eps / steps
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    torch.manual_seed(0)
    _, clipped, fb_success = fb.attacks.LinfPGD(steps=steps, abs_stepsize=alpha)(fmodel, x, y, epsilons=[eps])
    ours = PGD(steps=steps, abs_stepsize=alpha, seed=0)(model, x, y, eps=eps)
    assert 0.2 < fb_success.float().mean() < 0.95  # a budget where strength can differ
    assert ours.success.float().mean() >= fb_success.float().mean()
    assert ours.grad_steps <= steps * 500
