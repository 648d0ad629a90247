"""The image half: data, models, classifier training (adversarial / noise / poisoning hooks), the attack bench."""
