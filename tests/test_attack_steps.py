"""Gradient attacks, step by step, against the papers' formulas on a linear model.

For logits z = W x + b and the cross-entropy loss J, the input gradient has the
closed form  grad_x J(x, y) = W^T (softmax(z) - e_y),  so each iterate can be
computed by hand (no autograd) and compared with the attack's. `early_stop=False`
makes the attack return its last iterate, whatever the model answers on the way.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import BIM, DIFGSM, FGSM, MIFGSM, GradientAttack
from attacks.gradient import input_diversity

D, K = 12, 3


def linear_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, K))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(K, D, generator=g))
        model[1].bias.copy_(torch.randn(K, generator=g))
    return model.double()


def batch(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g, dtype=torch.float64), torch.randint(0, K, (n,), generator=g)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x CE(W x + b, y) = W^T (softmax(z) - e_y), per sample, by the closed form."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ W.T + b, -1)
    return ((p - F.one_hot(y, K).to(p.dtype)) @ W).view_as(x)


def step(x, x_adv, direction, alpha, eps):
    """x_{t+1} = clip_[0,1](clip_{x, eps}(x_t + alpha sign(direction)))."""
    return (x + (x_adv + alpha * direction.sign() - x).clamp(-eps, eps)).clamp(0, 1)


def mi_fgsm_by_hand(model, x, y, eps, steps, mu):
    """Dong et al. 2018, Algorithm 1: g_{t+1} = mu g_t + grad / ||grad||_1;  x_{t+1} = x_t + alpha sign(g_{t+1})."""
    alpha = eps / steps
    x_adv, g = x.clone(), torch.zeros_like(x)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)
        g = mu * g + grad / grad.abs().flatten(1).sum(1).view(-1, *[1] * (x.ndim - 1))
        x_adv = step(x, x_adv, g, alpha, eps)
    return x_adv


def test_mi_fgsm_accumulates_momentum_as_in_dong_et_al():
    model = linear_model()
    x, y = batch()
    eps, steps = 0.3, 10
    expected = mi_fgsm_by_hand(model, x, y, eps, steps, mu=1.0)
    without_momentum = mi_fgsm_by_hand(model, x, y, eps, steps, mu=0.0)
    assert not torch.allclose(expected, without_momentum)  # the fixture can tell momentum from none
    result = MIFGSM(early_stop=False)(model, x, y, eps=eps)
    assert torch.allclose(result.x_adv, expected, atol=1e-12)
    assert result.grad_steps == steps * len(x)
    decayed = GradientAttack(steps=steps, rel_stepsize=1 / steps, random_start=False, momentum=0.5, early_stop=False)
    assert torch.allclose(decayed(model, x, y, eps=eps).x_adv, mi_fgsm_by_hand(model, x, y, eps, steps, mu=0.5),
                          atol=1e-12)


def test_fgsm_and_bim_are_the_same_step_without_momentum():
    """FGSM: x + eps sign(grad) (Goodfellow et al. 2015); BIM: T steps of eps/T (Kurakin et al. 2017)."""
    model = linear_model()
    x, y = batch()
    assert torch.allclose(FGSM(early_stop=False)(model, x, y, eps=0.1).x_adv,
                          step(x, x, input_gradient(model, x, y), 0.1, 0.1), atol=1e-12)
    x_adv = x.clone()
    for _ in range(10):
        x_adv = step(x, x_adv, input_gradient(model, x_adv, y), 0.01, 0.1)
    assert torch.allclose(BIM(early_stop=False)(model, x, y, eps=0.1).x_adv, x_adv, atol=1e-12)


def test_l2_pgd_step_is_the_normalised_gradient_projected_on_the_ball():
    """L2: x_{t+1} = x + Proj_{||.||_2 <= eps}(x_t - x + alpha g / ||g||_2), then the box (Madry et al. 2018)."""
    model = linear_model()
    x, y = batch()
    eps, alpha = 0.5, 0.2
    attack = GradientAttack(norm="l2", steps=3, abs_stepsize=alpha, random_start=False, early_stop=False, bounds=None)
    delta = torch.zeros_like(x)
    for _ in range(3):
        g = input_gradient(model, x + delta, y)
        delta = delta + alpha * g / g.norm(dim=1, keepdim=True)
        delta = delta * (eps / delta.norm(dim=1, keepdim=True)).clamp(max=1.0)
    assert torch.allclose(attack(model, x, y, eps=eps).x_adv, x + delta, atol=1e-12)


def test_input_diversity_is_resize_then_pad_then_resize_back():
    """T(x) of Xie et al. 2019: resize to rnd in [H, H r), zero-pad to H r at a random offset, resize back to H."""
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    assert input_diversity(x, 1.3, 0.0, None) is x
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        out = input_diversity(x, 1.3, 1.0, g)
        g = torch.Generator().manual_seed(seed)
        torch.rand((), generator=g)  # the coin (apply T with probability p) is drawn first
        size = int(torch.randint(10, 13, (), generator=g))
        top = int(torch.randint(0, 13 - size + 1, (), generator=g))
        left = int(torch.randint(0, 13 - size + 1, (), generator=g))
        small = F.interpolate(x, size=(size, size), mode="nearest")
        padded = torch.zeros(2, 1, 13, 13, dtype=x.dtype)
        padded[..., top:top + size, left:left + size] = small
        expected = F.interpolate(padded, size=(10, 10), mode="bilinear", align_corners=False)
        assert torch.allclose(out, expected, atol=1e-12), seed


def test_di_fgsm_step_takes_the_gradient_at_the_transformed_input():
    """x_1 = clip(x + alpha sign(grad_x J(W T(x) + b, y))): the gradient flows back through the random T."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, K)).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    eps = 0.05
    attack = DIFGSM(steps=1, rel_stepsize=1.0, diversity_prob=1.0, resize_rate=1.5, seed=7, early_stop=False)
    g = torch.Generator().manual_seed(7)
    xin = x.clone().requires_grad_(True)
    transformed = input_diversity(xin, 1.5, 1.0, g)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(transformed.flatten(1) @ W.T + b, -1)
    # the chain rule by hand: dJ/dT = W^T (p - e_y), pulled back through the (linear) T by its vector-Jacobian product
    grad, = torch.autograd.grad(transformed, xin, ((p - F.one_hot(y, K)) @ W).detach().view_as(x))
    expected = step(x, x, grad, eps, eps)
    plain = step(x, x, input_gradient(model, x, y), eps, eps)
    assert not torch.allclose(expected, plain)  # T changes the step
    assert torch.allclose(attack(model, x, y, eps=eps).x_adv, expected, atol=1e-12)


def test_early_stop_returns_the_first_adversarial_iterate():
    """With early_stop, a sample stops at the first iterate the model gets wrong, and spends no more gradients."""
    model = linear_model()
    x, y = batch(8)
    eps, steps = 0.5, 10
    full = BIM(early_stop=False, steps=steps)(model, x, y, eps=eps)
    early = BIM(steps=steps)(model, x, y, eps=eps)
    assert torch.equal(early.success, full.success)
    x_adv, first = x.clone(), x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        first[wrong & ~found] = x_adv[wrong & ~found]
        found |= wrong
        x_adv = step(x, x_adv, input_gradient(model, x_adv, y), eps / steps, eps)
    assert found.any() and early.grad_steps < full.grad_steps
    assert torch.allclose(early.x_adv[found], first[found], atol=1e-12)


def test_apgd_step_and_checkpoints_follow_croce_and_hein():
    """Croce & Hein 2020, Alg. 1: z = P(x_k + eta sign(g)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),
    a = 0.75; step-size checkpoints w_j = ceil(p_j N), p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    from attacks.apgd import ALPHA, apgd_step, checkpoints

    assert ALPHA == 0.75
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # p = .22 .41 .57 .70 .80 .87 .93 .99
    model = linear_model()
    x, y = batch()
    eps = 0.1
    g = torch.Generator().manual_seed(2)

    def project(v):
        return (x + (v - x).clamp(-eps, eps)).clamp(0, 1)

    x_prev = project(x + eps * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))
    x_k = project(x + eps * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))
    grad = input_gradient(model, x_k, y)
    eta = torch.tensor([0.2, 0.1, 0.05, 0.02], dtype=x.dtype)
    z = project(x_k + eta[:, None] * grad.sign())
    expected = project(x_k + 0.75 * (z - x_k) + 0.25 * (x_k - x_prev))
    assert torch.allclose(apgd_step(x_k, x_prev, grad, eta, ALPHA, "linf", project), expected, atol=1e-12)
    assert not torch.allclose(expected, z)  # the momentum term moves the iterate off the plain step
    assert torch.allclose(apgd_step(x_k, x_prev, grad, eta, 1.0, "linf", project), z, atol=1e-12)  # k = 0: a = 1


def test_step_options_and_label_errors_say_which():
    """A zero step size or a resize rate of 1 (no diversity) is refused; a bad label names whose it is."""
    with pytest.raises(ValueError, match="^abs_stepsize must be > 0 or None, got 0"):
        GradientAttack(abs_stepsize=0.0)
    with pytest.raises(ValueError, match="^resize_rate must be > 1, got 1"):
        DIFGSM(resize_rate=1.0)
    model = linear_model()
    x, y = batch()
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 2\]"):
        FGSM()(model, x, torch.full_like(y, 5), eps=0.1)
    with pytest.raises(ValueError, match=r"^target labels must be in \[0, 2\]"):
        FGSM()(model, x, torch.zeros_like(y), eps=0.1, target=torch.full_like(y, 7))
