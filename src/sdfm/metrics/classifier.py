"""A small classifier trained on real data, as a feature space for scoring generated samples.

Generated samples are scored by (i) the Frechet distance between Gaussians fitted to the classifier's
penultimate features of real and generated samples — the recipe of FID, but in the feature space
of *this* classifier, so the numbers are comparable only between runs that use the same classifier
(report it as "classifier Frechet distance", never as FID) — (ii) the classifier's accuracy on
samples generated for a given label (conditional models), and (iii) the total variation between
the predicted-class histogram of the samples and the real class frequencies (unconditional models:
a mode-coverage score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Input size, classes and layout. Images ((C, H, W) given) get a three-layer CNN, everything else
    an MLP; both end in ``features`` SiLU units (the feature space) and a linear head."""

    dim: int
    num_classes: int
    image_shape: tuple[int, int, int] | None = None
    hidden: int = 256
    features: int = 128

    def __post_init__(self):
        if self.dim < 1 or self.num_classes < 2:
            raise ValueError(
                f"classifier: need dim >= 1 and num_classes >= 2, got {self.dim}, {self.num_classes}"
            )
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
            if int(np.prod(self.image_shape)) != self.dim:
                raise ValueError(f"classifier: image_shape {self.image_shape} does not hold dim {self.dim}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["image_shape"] = list(self.image_shape) if self.image_shape else None
        return out


class FeatureClassifier(nn.Module):
    """logits = head(features(x)); x [n, dim] flat (images are reshaped inside)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        f = config.features
        if config.image_shape is not None:
            c = config.image_shape[0]
            self.body = nn.Sequential(
                nn.Conv2d(c, 32, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.SiLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
                nn.Linear(256, f),
                nn.SiLU(),
            )
        else:
            h = config.hidden
            self.body = nn.Sequential(
                nn.Linear(config.dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, f), nn.SiLU()
            )
        self.head = nn.Linear(f, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[n, dim] -> [n, features]."""
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"x: expected [n, {self.config.dim}], got {list(x.shape)}")
        if self.config.image_shape is not None:
            x = x.reshape(x.shape[0], *self.config.image_shape)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit_classifier(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    image_shape=None,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 2e-3,
    noise_std: float = 0.1,
    seed: int = 0,
    config: ClassifierConfig | None = None,
) -> FeatureClassifier:
    """Trains a :class:`FeatureClassifier` on (x [N, dim], labels [N]) with AdamW and a cosine
    schedule, on x's device. Inputs are jittered with Gaussian noise of ``noise_std`` (in the units of
    x; data are expected normalised) so that the features are not brittle on slightly noisy samples.
    Deterministic for a given ``seed`` (the global RNG is restored afterwards). Returns it in eval mode."""
    x = torch.as_tensor(x)
    labels = torch.as_tensor(labels, device=x.device).long()
    if x.dim() != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"x, labels: expected [N, d] and [N], got {list(x.shape)} and {list(labels.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps, batch_size: expected >= 1, got {steps}, {batch_size}")
    x = x.float()
    num_classes = int(labels.max()) + 1
    config = config or ClassifierConfig(
        dim=x.shape[1], num_classes=max(num_classes, 2), image_shape=image_shape
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(config).to(x.device)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen, device=x.device)
        xb = x[idx]
        if noise_std > 0:
            xb = xb + noise_std * torch.randn(xb.shape, generator=gen, device=x.device)
        loss = nn.functional.cross_entropy(model(xb), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def classifier_features(model: FeatureClassifier, x) -> torch.Tensor:
    """Penultimate features [n, features] (float64, CPU) of x [n, dim]."""
    p = next(model.parameters())
    x = torch.as_tensor(x).to(p.device, torch.float32)
    return _batched(model.features, x).double().cpu()


@torch.no_grad()
def classifier_predict(model: FeatureClassifier, x) -> torch.Tensor:
    """Predicted labels [n] of x [n, dim]."""
    p = next(model.parameters())
    x = torch.as_tensor(x).to(p.device, torch.float32)
    return _batched(lambda b: model(b).argmax(1), x).cpu()


def accuracy(model: FeatureClassifier, x, labels) -> float:
    """Fraction of x [n, dim] classified as ``labels`` [n]."""
    labels = torch.as_tensor(labels).cpu().long()
    if labels.shape != (torch.as_tensor(x).shape[0],):
        raise ValueError(f"labels: expected [{torch.as_tensor(x).shape[0]}], got {list(labels.shape)}")
    return float((classifier_predict(model, x) == labels).double().mean())


def label_tv(model: FeatureClassifier, x, class_freq) -> float:
    """Total variation 1/2 sum_c |p_hat(c) - p(c)| between the classes predicted for x [n, dim] and
    the class frequencies ``class_freq`` [K] of the real data (0: every class as often as in the data)."""
    freq = torch.as_tensor(class_freq, dtype=torch.float64).cpu()
    pred = classifier_predict(model, x)
    hist = torch.bincount(pred, minlength=freq.numel()).double() / pred.numel()
    return 0.5 * float((hist - freq / freq.sum()).abs().sum())


def frechet_from_moments(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): W2^2 between N(mu1, S1) and N(mu2, S2)
    (the formula of FID). The matrix square root is scipy's ``sqrtm``; its tiny imaginary part
    from round-off is dropped."""
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"moments: shapes differ: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}"
        )
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = 1e-6 * np.eye(cov1.shape[0])
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to feature sets
    a [n, k] and b [m, k]."""
    a = np.asarray(torch.as_tensor(a).double().cpu())
    b = np.asarray(torch.as_tensor(b).double().cpu())
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features: expected [n, k] and [m, k] with n, m >= 2, got {a.shape} and {b.shape}")
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
