"""What every coupling shares: the data, their labels and weights, the noise source."""

from __future__ import annotations

import torch

from sdfm.protocols import Pairs
from sdfm.transport.sources import draw, standard_normal
from sdfm.transport.validate import as_targets, as_weights, check_positive_int


def check_labels(labels, n_targets: int) -> torch.Tensor | None:
    """Labels [N] as int64 (or None)."""
    if labels is None:
        return None
    t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if t.dim() != 1 or t.shape[0] != n_targets:
        raise ValueError(f"labels: expected shape [{n_targets}] (one per data point), got {tuple(t.shape)}")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError("labels: expected integer class labels")
    return t.to(torch.long)


class DataCoupling:
    """Base of the couplings: data [N, d] (the device and dtype of the pairs), labels, weights, noise.

    Args:
        data: data points [N, d] (float; integers are promoted to float32).
        labels: optional class labels [N]; they travel with the pairs as ``cond``.
        conditions: optional continuous condition vectors [N, k] (exclusive with labels); the pairs'
            ``cond`` is then the condition the noise was drawn with (for the independent coupling, the
            condition of the paired data point).
        weights: optional positive data weights [N] (normalised); default uniform.
        noise: the source sampler ``noise(n, d, generator=, device=, dtype=)``; default N(0, I).
    """

    def __init__(self, data, *, labels=None, weights=None, noise=standard_normal, conditions=None):
        self.data = as_targets(data, "data")
        n_targets = self.data.shape[0]
        self.labels = check_labels(labels, n_targets)
        if self.labels is not None:
            self.labels = self.labels.to(self.data.device)
        self.conditions = None
        if conditions is not None:
            if self.labels is not None:
                raise ValueError("conditions: pass class labels or condition vectors, not both")
            z = as_targets(conditions, "conditions")
            if z.shape[0] != n_targets:
                raise ValueError(
                    f"conditions: expected [{n_targets}, k] (one per data point), got {list(z.shape)}"
                )
            self.conditions = z.to(device=self.data.device, dtype=self.data.dtype)
        self.weights = as_weights(weights, n_targets)
        self.noise = noise

    @property
    def num_data(self) -> int:
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    @property
    def device(self) -> torch.device:
        return self.data.device

    def _check_n(self, n) -> int:
        return check_positive_int(n, "n", allow_none=False)

    def draw_noise(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return draw(self.noise, n, self.dim, generator=generator, device=self.device, dtype=self.data.dtype)

    def draw_index(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n data indices drawn i.i.d. from the data weights (uniform by default)."""
        if self.weights is None:
            return torch.randint(self.num_data, (n,), generator=generator, device=self.device)
        return torch.multinomial(self.weights.to(self.device), n, replacement=True, generator=generator)

    def pairs(self, x0: torch.Tensor, index: torch.Tensor, cond: torch.Tensor | None = None) -> Pairs:
        """Pairs of ``x0`` with data ``index``; ``cond`` defaults to the data points' labels/conditions."""
        if cond is None:
            cond = self.labels if self.labels is not None else self.conditions
            cond = None if cond is None else cond[index]
        return Pairs(x0=x0, x1=self.data[index], index=index, cond=cond)
