"""Finding poisoned training samples in a trained network's representations.

A backdoored network (BadNets, `attacks.poisoning`) maps a triggered image of
class s to the target t through features that clean images of t do not use, so
inside the training samples labelled t the penultimate activations R split into
two populations. Both detectors look at R one label at a time:

- Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor
  Attacks"): centre R_c, take its top right singular vector v and score each
  sample by its squared projection, tau_i = ((R_i - mean(R_c)) . v)^2; the
  poisoned samples carry the largest scores. Tran et al. remove the top
  1.5 * eps * n_c samples of every label c, eps an upper bound on the poisoned
  share of a label. Removing a fixed share of every label also removes clean
  images of the clean labels, so here a label is flagged only when its
  projections are two-humped, and the hump's size stands in for eps * n_c
  (see `spectral_signatures`).
- Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee,
  Molloy & Srivastava 2018, "Detecting Backdoor Attacks on Deep Neural Networks
  by Activation Clustering"): reduce R_c to 10 components, split it with
  2-means, and call the smaller cluster poison when the split is clean
  (silhouette score) and the cluster is small enough (relative size).

Both need the poisoned share of the target label to be large enough to form a
direction / cluster, and both fail against adaptive attacks that keep the
poisoned representations inside the clean ones (Tang, Wang, Tang & Zhang 2021,
"Demon in the Variant"; Qi, Xie, Li, Wang & Mittal 2023, "Revisiting the
Assumption of Latent Separability for Backdoor Defenses").

PCA, 2-means and the silhouette are a few lines of torch each (scikit-learn's
import alone took 4-12 s on the course machines). Depends on torch; never on rlab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

DETECTORS = ("spectral", "clustering")  # the first is the default


@torch.no_grad()
def penultimate_features(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """The representation the detectors read: the input of the model's last nn.Linear layer,
    (N, d) float32 on the CPU, computed in eval mode in batches of `batch_size`."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input could serve as "
                         "the penultimate representation")
    captured: list[Tensor] = []
    hook = linear[-1].register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].flatten(1).float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.empty(0, linear[-1].in_features)


@dataclass
class Detection:
    """What a detector found: `suspects` (N,) bool, and per label the statistics it decided on."""

    suspects: Tensor
    method: str
    per_class: dict[int, dict] = field(default_factory=dict)

    def precision_recall(self, poisoned: Tensor) -> tuple[float, float]:
        """Precision |S & P| / |S| and recall |S & P| / |P| against the true poisoned set P
        (precision is 1 when nothing is flagged, recall 1 when nothing was poisoned)."""
        poisoned = poisoned.to(torch.bool).cpu()
        if poisoned.shape != self.suspects.shape:
            raise ValueError(f"poisoned must have shape {tuple(self.suspects.shape)}, got {tuple(poisoned.shape)}")
        hits = int((self.suspects & poisoned).sum())
        flagged, planted = int(self.suspects.sum()), int(poisoned.sum())
        return (hits / flagged if flagged else 1.0), (hits / planted if planted else 1.0)


def _check(features: Tensor, labels: Tensor) -> None:
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, d) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")


def spectral_scores(features: Tensor) -> Tensor:
    """Tran et al.'s outlier score of one label's representations R (n, d):
    tau_i = ((R_i - mean R) . v)^2, v the top right singular vector of R - mean R."""
    return top_direction_projection(features).pow(2).float()


def top_direction_projection(features: Tensor) -> Tensor:
    """p_i = (R_i - mean R) . v, v the top right singular vector of R - mean R (float64)."""
    return principal_components(features, 1)[:, 0]


def principal_components(features: Tensor, k: int) -> Tensor:
    """(R - mean R) projected on its top k right singular vectors: (n, k), float64."""
    centred = features.double() - features.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:k].T


def two_means(z: Tensor, iterations: int = 100, starts: int = 10) -> Tensor:
    """k = 2 means on the rows of z (n, d): (n,) assignment in {0, 1}, the split of least within-cluster sum of
    squares (inertia) found.

    1-D z: the exact optimum (the best split of the sorted values, a scan of prefix sums). Otherwise Lloyd's
    algorithm ("assign to the nearer centre" / "move each centre to its members' mean" until no assignment
    changes) from `starts` deterministic starts, the splits by the sign of each of z's top principal components
    (the first is the relaxed 2-means solution, Ding & He 2004), keeping the lowest inertia, as k-means is used
    in practice (scikit-learn's n_init). One start is not enough: on a backdoored CIFAR-10 label (500 poisoned of
    5,500, lab seed 2) the first component's start settled on a natural split of the clean images (inertia
    458,397, silhouette 0.18), the second component's on the poison itself (453,233, silhouette 0.37).
    """
    z = z.double()
    n = len(z)
    if n < 2:
        return torch.zeros(n, dtype=torch.long)
    if z.shape[1] == 1:
        return _best_split_1d(z[:, 0])
    components = principal_components(z, min(starts, z.shape[1], n))
    best, best_inertia = torch.zeros(n, dtype=torch.long), math.inf
    for k in range(components.shape[1]):
        assign = _lloyd(z, (components[:, k] > 0).long(), iterations)
        inertia = _inertia(z, assign)
        if inertia < best_inertia:  # ties: the earlier start
            best, best_inertia = assign, inertia
    return best


def _lloyd(z: Tensor, assign: Tensor, iterations: int) -> Tensor:
    for _ in range(iterations):
        if assign.min() == assign.max():
            break
        centres = torch.stack([z[assign == k].mean(0) for k in (0, 1)])
        new = torch.cdist(z, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def _inertia(z: Tensor, assign: Tensor) -> float:
    return sum(float((z[assign == k] - z[assign == k].mean(0)).pow(2).sum()) for k in (0, 1) if (assign == k).any())


def _best_split_1d(values: Tensor) -> Tensor:
    """The 2-means optimum in one dimension: the cut of the sorted values with the least inertia."""
    order = values.argsort()
    v = values[order]
    n = len(v)
    left = torch.arange(1, n, dtype=torch.float64)  # sizes of the lower part for cuts after 1 .. n-1 values
    prefix, prefix_sq = v.cumsum(0)[:-1], v.pow(2).cumsum(0)[:-1]
    total, total_sq = v.sum(), v.pow(2).sum()
    inertia = (prefix_sq - prefix.pow(2) / left) + ((total_sq - prefix_sq) - (total - prefix).pow(2) / (n - left))
    cut = int(inertia.argmin()) + 1
    assign = torch.zeros(n, dtype=torch.long)
    assign[order[cut:]] = 1
    return assign


def two_means_separation(z: Tensor, assign: Tensor) -> float:
    """Along the line through the two centres, |mu_1 - mu_2| / (sigma_1 + sigma_2).
    A single Gaussian splits at ~1.3 (centres at +-0.80 sigma, spreads 0.60 sigma);
    two modes k sigmas apart give ~k / 2."""
    z = z.double()
    if assign.min() == assign.max():
        return 0.0
    centres = torch.stack([z[assign == k].mean(0) for k in (0, 1)])
    axis = (centres[1] - centres[0]) / (centres[1] - centres[0]).norm().clamp_min(1e-12)
    along = [z[assign == k] @ axis for k in (0, 1)]
    spread = along[0].std(unbiased=False) + along[1].std(unbiased=False)
    return float((along[1].mean() - along[0].mean()).abs() / spread.clamp_min(1e-12))


def silhouette_score(z: Tensor, assign: Tensor, chunk: int = 1024) -> float:
    """Mean silhouette (Rousseeuw 1987) of a 2-cluster split: s_i = (b_i - a_i) / max(a_i, b_i),
    a_i the mean distance to the rest of i's cluster, b_i to the other cluster (0 for singletons)."""
    z = z.double()
    sizes = torch.bincount(assign, minlength=2).double()
    if sizes.min() == 0:
        return 0.0
    values = []
    for start in range(0, len(z), chunk):
        d = torch.cdist(z[start:start + chunk], z)
        sums = torch.stack([d[:, assign == k].sum(1) for k in (0, 1)], 1)
        own = assign[start:start + chunk]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        b = sums.gather(1, (1 - own)[:, None])[:, 0] / sizes[1 - own]
        values.append(torch.where(own_size > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-12), torch.zeros_like(a)))
    return float(torch.cat(values).mean())


def spectral_signatures(features: Tensor, labels: Tensor, min_separation: float = 2.5, removal_factor: float = 1.5,
                        min_class_size: int = 20) -> Detection:
    """Spectral-signature detection (Tran et al. 2018), one label at a time.

    Per label c: the projections p_i = (R_i - mean) . v on the top singular
    vector (tau_i = p_i^2 is Tran et al.'s score) split by 2-means. A label is
    flagged when the split is two-humped, separation >= `min_separation` (see
    `two_means_separation`; clean labels measure 1.3-2.0 on MNIST-5k and
    1.3-1.5 on CIFAR-10, backdoored ones 3-4.5 and 5.4). Tran et al. then remove the top 1.5 * eps * n_c scores, eps a
    user-given bound on the poisoned share; here eps * n_c is estimated as the
    smaller hump's size, and the score is one-sided, p_i towards the smaller
    hump (tau is symmetric, and the clean hump's far tail can outrank the
    poison's near edge). So `removal_factor` (1.5) times the smaller hump is removed.
    """
    _check(features, labels)
    if not removal_factor >= 1:
        raise ValueError(f"removal_factor must be >= 1, got {removal_factor}")
    suspects = torch.zeros(len(labels), dtype=torch.bool)
    per_class: dict[int, dict] = {}
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < min_class_size:
            continue
        projection = top_direction_projection(features[members])
        assign = two_means(projection[:, None])
        separation = two_means_separation(projection[:, None], assign)
        sizes = torch.bincount(assign, minlength=2)
        smaller = int(sizes.argmin())
        towards_smaller = torch.sign(projection[assign == smaller].mean() - projection[assign != smaller].mean())
        flagged = separation >= min_separation
        n_remove = min(len(members), math.ceil(removal_factor * int(sizes[smaller]))) if flagged else 0
        if n_remove:
            suspects[members[torch.argsort(-towards_smaller * projection)[:n_remove]]] = True
        per_class[c] = {"size": len(members), "separation": separation, "smaller_hump": int(sizes[smaller]),
                        "flagged": flagged, "removed": n_remove}
    return Detection(suspects, "spectral", per_class)


def activation_clustering(features: Tensor, labels: Tensor, components: int = 10, max_relative_size: float = 0.35,
                          min_silhouette: float = 0.35, min_class_size: int = 20) -> Detection:
    """Activation clustering (Chen et al. 2018), one label at a time.

    Per label c: centre R_c, reduce it to `components` dimensions, split it with
    2-means, and flag the smaller cluster when its relative size
    |small| / n_c <= `max_relative_size` (Chen et al.'s 35%) and the split's
    silhouette score >= `min_silhouette` (clean labels measure 0.15-0.29 on
    MNIST-5k and 0.14-0.24 on CIFAR-10, backdoored ones 0.36-0.53 and 0.61). Chen et al. reduce with FastICA; this
    uses PCA (ART's default): FastICA did not converge on these activations.
    The relative-size rule misses a backdoor whose poison makes up more than
    35% of its label (10% poison on MNIST-5k: 50%).
    """
    _check(features, labels)
    suspects = torch.zeros(len(labels), dtype=torch.bool)
    per_class: dict[int, dict] = {}
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < max(min_class_size, components + 2):
            continue
        z = principal_components(features[members], min(components, features.shape[1]))
        assign = two_means(z)
        sizes = torch.bincount(assign, minlength=2)
        smaller = int(sizes.argmin())
        relative_size = int(sizes[smaller]) / len(members)
        silhouette = silhouette_score(z, assign)
        flagged = relative_size <= max_relative_size and silhouette >= min_silhouette
        if flagged:
            suspects[members[assign == smaller]] = True
        per_class[c] = {"size": len(members), "relative_size": relative_size, "silhouette": silhouette,
                        "flagged": flagged, "removed": int(sizes[smaller]) if flagged else 0}
    return Detection(suspects, "clustering", per_class)


def detect_poison(features: Tensor, labels: Tensor, method: str = DETECTORS[0], **kwargs) -> Detection:
    """Run detector `method` (spectral, clustering) on representations (N, d) with their training labels (N,)."""
    if method == "spectral":
        return spectral_signatures(features, labels, **kwargs)
    if method == "clustering":
        return activation_clustering(features, labels, **kwargs)
    raise ValueError(f"unknown poison detector {method!r}; allowed: {', '.join(DETECTORS)}")
