"""Defenses against adversarial examples: input transformations that compose in
front of any torch classifier (MagNet's autoencoder reformer among them),
adversarial training, an evaluation that reports both the non-adaptive and the
adaptive (BPDA / EOT) robust accuracy, and the detection of poisoned training
samples (spectral signatures, activation clustering).

Depends on torch, kornia, Pillow and `attacks`; never on rlab.
"""

from defenses.adversarial_training import METHODS, AdversarialTraining
from defenses.evaluation import attacker_view, correct, evaluate_defense
from defenses.generative import DenoisingAutoencoder, MagNetReformer, train_denoising_autoencoder
from defenses.jpeg import differentiable_jpeg, jpeg_codec
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

__all__ = [
    "AdversarialTraining", "BPDA", "BitDepth", "DEFENSES", "DETECTORS", "Detection", "DenoisingAutoencoder", "EOT",
    "GRADIENT_RULES", "GaussianBlur", "Identity", "JPEG", "METHODS", "MagNetReformer",
    "MedianSmoothing", "RandomResizePad", "attacker_view", "bpda", "correct", "detect_poison",
    "differentiable_jpeg", "evaluate_defense", "jpeg_codec", "make_defense", "parse_spec", "penultimate_features",
    "train_denoising_autoencoder",
]
