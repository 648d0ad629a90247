"""Adversarial attacks on any torch image classifier (no dependency on rlab).

    from attacks import PGD
    result = PGD(steps=10)(model, x, y, eps=[2/255, 4/255, 8/255])
    result.x_adv        # (3, N, C, H, W), inside each eps-ball and [0, 1]
    result.success      # (3, N) bool
    result.grad_steps   # forward+backward passes of single images spent

White box: FGSM, BIM (I-FGSM), PGD, L2PGD, MIFGSM, DIFGSM, DIMIFGSM (attacks.gradient).
Ensembles and transfer: Ensemble, transfer_attack, train_substitute.
Query-based black box: SquareAttack, SimBA, DecisionAttack (foolbox's HopSkipJump /
Boundary), OnePixel; universal perturbation: UniversalPerturbation.
Curves: robust_accuracy. By name: ATTACKS, make_attack.
Data poisoning (a training-set transform, not a test-time attack): BadNets, Trigger,
attack_success_rate (attacks.poisoning).
"""

from attacks.core import L2, LINF, NORMS, AttackResult, distance, margin, objective
from attacks.decision import DecisionAttack
from attacks.ensemble import Ensemble
from attacks.gradient import BIM, DIFGSM, DIMIFGSM, FGSM, L2PGD, MIFGSM, PGD, GradientAttack, input_diversity
from attacks.poisoning import BadNets, PoisonedSet, Trigger, attack_success_rate
from attacks.queries import OnePixel, SimBA, SquareAttack
from attacks.registry import ATTACKS, make_attack
from attacks.robust import RobustAccuracy, robust_accuracy
from attacks.transfer import SubstituteResult, TransferResult, train_substitute, transfer_attack
from attacks.universal import UniversalPerturbation, apply_perturbation

__all__ = [
    "ATTACKS", "BIM", "DIFGSM", "DIMIFGSM", "FGSM", "L2", "L2PGD", "LINF", "MIFGSM", "NORMS", "PGD",
    "AttackResult", "BadNets", "DecisionAttack", "Ensemble", "GradientAttack", "OnePixel", "PoisonedSet",
    "RobustAccuracy", "SimBA", "SquareAttack", "SubstituteResult", "TransferResult", "Trigger",
    "UniversalPerturbation", "apply_perturbation", "attack_success_rate", "distance", "input_diversity",
    "make_attack", "margin", "objective", "robust_accuracy", "train_substitute", "transfer_attack",
]
