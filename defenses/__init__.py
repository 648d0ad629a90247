"""Defenses against adversarial examples: input transformations that compose in
front of any torch classifier (MagNet's autoencoder reformer among them),
adversarial training, an evaluation that reports both the non-adaptive and the
adaptive (BPDA / EOT) robust accuracy, randomized smoothing (training under
Gaussian noise, a smoothed classifier that predicts, abstains and certifies an
L2 radius), and the detection of poisoned training samples (spectral
signatures, activation clustering).

Depends on torch, kornia, Pillow, scipy and `attacks`; never on rlab.
"""

from defenses.adversarial_training import METHODS, AdversarialTraining
from defenses.evaluation import attacker_view, correct, evaluate_defense
from defenses.generative import DenoisingAutoencoder, MagNetReformer, train_denoising_autoencoder
from defenses.jpeg import differentiable_jpeg, jpeg_codec
from defenses.noise_training import gaussian_noise
from defenses.preprocessing import (
    BPDA,
    EOT,
    GRADIENT_RULES,
    JPEG,
    BitDepth,
    GaussianBlur,
    Identity,
    MedianSmoothing,
    RandomResizePad,
    bpda,
)
from defenses.registry import DEFENSES, make_defense, parse_spec
from defenses.smoothing import (ABSTAIN, Certificate, SmoothedClassifier, SoftSmoothed, binomial_test_two_sided,
                                clopper_pearson_lower)

__all__ = [
    "ABSTAIN", "AdversarialTraining", "BPDA", "BitDepth", "Certificate", "DEFENSES", "DETECTORS",
    "DenoisingAutoencoder", "Detection", "EOT", "GRADIENT_RULES", "GaussianBlur", "Identity", "JPEG", "METHODS",
    "MagNetReformer", "MedianSmoothing", "RandomResizePad", "SmoothedClassifier", "SoftSmoothed", "attacker_view",
    "binomial_test_two_sided", "bpda", "clopper_pearson_lower", "correct", "detect_poison", "differentiable_jpeg",
    "evaluate_defense", "gaussian_noise", "jpeg_codec", "make_defense", "parse_spec", "penultimate_features",
    "train_denoising_autoencoder",
]
