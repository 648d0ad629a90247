"""Adversarial attacks on any torch image classifier (no dependency on rlab).

    from attacks import PGD
    result = PGD(steps=10)(model, x, y, eps=[2/255, 4/255, 8/255])
    result.x_adv        # (3, N, C, H, W), inside each eps-ball and [0, 1]
    result.success      # (3, N) bool
    result.grad_steps   # forward+backward passes of single images spent

White box: FGSM, BIM (I-FGSM), PGD, L2PGD, MIFGSM, DIFGSM, DIMIFGSM (attacks.gradient);
APGD, APGDDLR, APGDT (attacks.apgd: step size without tuning, CE / DLR / targeted DLR).
The default evaluation: AutoAttack (APGD-CE, APGD-T, Square on the survivors; attacks.autoattack).
Ensembles and transfer: Ensemble, transfer_attack, train_substitute.
Query-based black box: SquareAttack, SimBA, DecisionAttack (foolbox's HopSkipJump /
Boundary), OnePixel; universal perturbation: UniversalPerturbation.
Beyond the eps-ball: AdversarialPatch (a universal, targeted patch; budget: its area),
AdversarialReprogramming (a learned program, on a frame or the whole image, makes the model do another task).
Curves: robust_accuracy. By name: ATTACKS, make_attack.
Data poisoning (a training-set transform, not a test-time attack): BadNets, Trigger,
attack_success_rate (attacks.poisoning).
"""

from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.autoattack import AutoAttack, masking_warnings
from attacks.core import L2, LINF, NORMS, AttackResult, distance, dlr, margin, objective, targeted_dlr
from attacks.decision import DecisionAttack
from attacks.ensemble import Ensemble
from attacks.gradient import BIM, DIFGSM, DIMIFGSM, FGSM, L2PGD, MIFGSM, PGD, GradientAttack, input_diversity
from attacks.poisoning import BadNets, PoisonedSet, Trigger, attack_success_rate
from attacks.patch import AdversarialPatch, paste_patch
from attacks.queries import OnePixel, SimBA, SquareAttack
from attacks.registry import ATTACKS, make_attack
from attacks.reprogramming import AdversarialProgram, AdversarialReprogramming, Reprogrammed, reprogrammed_accuracy
from attacks.robust import RobustAccuracy, robust_accuracy
from attacks.transfer import SubstituteResult, TransferResult, train_substitute, transfer_attack
from attacks.universal import UniversalPerturbation, apply_perturbation

__all__ = [
    "APGD", "APGDDLR", "APGDT", "ATTACKS", "AdversarialPatch", "AdversarialProgram", "AdversarialReprogramming",
    "AttackResult", "AutoAttack", "BIM", "BadNets", "DIFGSM", "DIMIFGSM", "DecisionAttack", "Ensemble", "FGSM",
    "GradientAttack", "L2", "L2PGD", "LINF", "MIFGSM", "NORMS", "OnePixel", "PGD", "PoisonedSet", "Reprogrammed",
    "RobustAccuracy", "SimBA", "SquareAttack", "SubstituteResult", "TransferResult", "Trigger",
    "UniversalPerturbation", "apply_perturbation", "attack_success_rate", "distance", "dlr", "input_diversity",
    "make_attack", "margin", "masking_warnings", "objective", "paste_patch", "reprogrammed_accuracy",
    "robust_accuracy", "targeted_dlr", "train_substitute", "transfer_attack",
]
