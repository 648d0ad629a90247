"""Black-box, transfer and universal attacks: each lowers accuracy on a small trained model and reports its cost."""

import pytest
import torch

from attacks import (BIM, MIFGSM, DecisionAttack, Ensemble, OnePixel, SimBA, SquareAttack, UniversalPerturbation,
                     distance, make_attack, train_substitute, transfer_attack)
from test_attacks_models import Net, mnist_14, mnist_test, trained_mlp


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("attack, eps, norm", [
    (SquareAttack(max_queries=200, seed=0), 0.2, "linf"),
    (SquareAttack(max_queries=200, seed=0, precision="bf16"), 0.2, "linf"),
    (SimBA(max_queries=200, seed=0), 0.2, "linf"),
    (OnePixel(population=30, generations=8, seed=0), 4, "l0"),
    (DecisionAttack("hopskipjump", norm="linf", steps=3, max_gradient_eval_steps=50, seed=0), 0.2, "linf"),
    (UniversalPerturbation(epochs=10, batch_size=16, seed=0), 0.2, "linf"),
], ids=["square", "square-bf16", "simba", "onepixel", "hopskipjump", "uap"])
def test_black_box_attacks_lower_accuracy_within_budget(attack, eps, norm):
    model = trained_mlp()
    x, y = mnist_test(60)
    clean = accuracy(model, x, y)
    result = attack(model, x, y, eps=eps)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (distance(result.x_adv, x, norm) <= eps + 1e-6).all()
    assert result.queries > 0
    robust = 1 - result.success.float().mean().item()
    assert robust < clean - 0.15
    with torch.no_grad():
        wrong = model(result.x_adv).argmax(1) != y
    assert torch.equal(result.success, wrong)


def test_score_based_attacks_respect_the_query_budget_and_eps_zero():
    model = trained_mlp()
    x, y = mnist_test(40)
    for attack in [SquareAttack(max_queries=50, seed=1), SimBA(max_queries=50, seed=1)]:
        result = attack(model, x, y, eps=[0.0, 0.1])
        assert result.x_adv.shape == (2, *x.shape)
        assert torch.equal(result.x_adv[0], x)
        assert result.queries <= 40 * (1 + 51 + 1) + 40
        again = type(attack)(max_queries=50, seed=1)(model, x, y, eps=0.1)
        assert torch.equal(again.x_adv, result.x_adv[1])


def test_query_attacks_validate_their_inputs():
    model = trained_mlp()
    x, y = mnist_test(4)
    with pytest.raises(ValueError, match="eps"):
        SquareAttack()(model, x, y, eps=2.0)
    with pytest.raises(ValueError, match="pixels"):
        OnePixel()(model, x, y, eps=1.5)
    with pytest.raises(ValueError, match="max_queries"):
        SimBA(max_queries=0)
    with pytest.raises(ValueError, match="norm"):
        DecisionAttack("boundary", norm="linf")
    with pytest.raises(ValueError, match="bounds"):
        SquareAttack()(model, x * 3, y, eps=0.1)
    assert isinstance(make_attack("square"), SquareAttack)


class OffsetLogits(torch.nn.Module):
    """Two logits 1000 - s and 1000 + s, s = 0.01 sum(x) in [0, 0.16]: class 1 in fp32 for every image, but in
    bf16 (spacing 4 at 1000) both round to 1000 and argmax says class 0."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[-0.01], [0.01]]).expand(2, 16))
            self.linear.bias.fill_(1000.0)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_bf16_square_search_decides_fooled_in_fp32():
    model = OffsetLogits()
    x, y = torch.full((8, 1, 4, 4), 0.5), torch.ones(8, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(x).argmax(1) == 0).all()  # what a bf16 decision would call fooled
    for precision in ("fp32", "bf16"):
        result = SquareAttack(max_queries=20, seed=0, precision=precision)(model, x, y, eps=0.1)
        assert not result.success.any()
    fp32 = SquareAttack(max_queries=20, seed=0)(model, x, y, eps=0.1).queries
    assert result.queries > fp32  # the fp32 checks are counted
    with pytest.raises(ValueError, match="precision"):
        SquareAttack(precision="fp16")


def test_targeted_square_attack_reaches_targets():
    model = trained_mlp()
    x, y = mnist_test(30)
    target = (y + 1) % 10
    result = SquareAttack(max_queries=300, seed=0)(model, x, y, eps=0.3, target=target)
    with torch.no_grad():
        reached = model(result.x_adv).argmax(1) == target
    assert torch.equal(result.success, reached)
    assert reached.float().mean() > 0.3


def test_universal_perturbation_is_one_delta_for_all():
    model = trained_mlp()
    x, y = mnist_test(200)
    result = UniversalPerturbation(epochs=3, seed=0)(model, x, y, eps=0.2)
    v = result.info["perturbation"]
    assert v.shape == (1, *x.shape[1:]) and v.abs().max() <= 0.2 + 1e-6
    assert torch.equal(result.x_adv, (x + v).clamp(0, 1))
    x_new, y_new = mnist_14()[0][4500:4700], mnist_14()[1][4500:4700]
    assert accuracy(model, (x_new + v).clamp(0, 1), y_new) < accuracy(model, x_new, y_new) - 0.2


def test_transfer_from_ensemble_of_surrogates_fools_a_different_victim():
    victim = trained_mlp(seed=1, hidden=128)
    surrogates = [trained_mlp(seed=2), trained_mlp(seed=3)]
    x, y = mnist_test(200)
    clean = accuracy(victim, x, y)
    single = transfer_attack(MIFGSM(), surrogates[0], victim, x, y, eps=[0.1, 0.2])
    both = transfer_attack(BIM(), Ensemble(surrogates), victim, x, y, eps=0.2)
    assert single.victim_accuracy.shape == (2,) and single.x_adv.shape == (2, *x.shape)
    assert single.victim_accuracy[1] < clean - 0.3
    assert single.victim_accuracy[0] >= single.victim_accuracy[1]
    assert both.victim_accuracy < clean - 0.3
    assert single.surrogate_success.float().mean() >= single.victim_success.float().mean()


def test_substitute_trained_on_victim_labels_only_transfers():
    victim = trained_mlp()
    x_all, y_all = mnist_14()
    x_seed = x_all[4600:4700]  # 100 unlabelled images: the attacker never sees a true label
    torch.manual_seed(0)
    result = train_substitute(victim, Net(32), x_seed, rounds=3, epochs=8, lr=3e-3)
    assert result.set_sizes == [100, 200, 400] and result.queries == 400
    x, y = mnist_test(200)
    agreement = (result.model(x).argmax(1) == victim(x).argmax(1)).float().mean()
    assert agreement > 0.6
    attacked = transfer_attack(MIFGSM(), result.model, victim, x, y, eps=0.2)
    assert attacked.victim_accuracy < accuracy(victim, x, y) - 0.2
