"""PCA projection of the pairing cost: 1/2 |P x - P y|^2 with P the top-K principal directions.

The paper solved ImageNet-64 in a 500-dimensional PCA space. With P [K, d] orthonormal rows, the
projected noise P x of x ~ N(0, I_d) is N(0, I_K): the semidiscrete problem in the projected space is
the ordinary one (standard Gaussian source, keys P y_j), solved and paired by the unchanged solver and
``assign``; the pairs keep the full x0 and y_j. Neither side is centred (the cost is translation
invariant; the solver centres internally).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdfm.transport import validate
from sdfm.transport._stream import chunk_size_for, target_chunks


@dataclass(frozen=True)
class PCAProjection:
    """Projection onto the top principal directions of the data.

    Attributes:
        components: P [K, d] float64, orthonormal rows, by decreasing variance (each row's largest
            entry positive, so a fit is deterministic).
        mean: the data mean [d] float64 (for reference; the projection does not centre).
        variances: the variance along each component [K] float64.
        total_variance: the data's total variance (trace of the covariance).
    """

    components: torch.Tensor
    mean: torch.Tensor
    variances: torch.Tensor
    total_variance: float

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained(self) -> float:
        """Fraction of the data's variance the K components keep."""
        return float(self.variances.sum()) / max(self.total_variance, 1e-300)

    @classmethod
    def fit(cls, targets, k: int, *, device=None, chunk_size: int | None = None) -> PCAProjection:
        """The top-``k`` principal directions of ``targets`` [N, d] (streamed: one [d, d] covariance,
        two passes over the targets, which may be memory-mapped)."""
        targets = validate.as_targets(targets)
        n, d = targets.shape
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise ValueError(f"k: expected an integer in [1, {d}] (the data dimension), got {k!r}")
        device = torch.device(device) if device is not None else targets.device
        chunk = chunk_size_for(d, n, d, chunk_size)
        mean = torch.zeros(d, dtype=torch.float64, device=device)
        for _, _, y in target_chunks(targets, chunk, device=device, dtype=torch.float64):
            mean += y.sum(0)
        mean /= n
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for _, _, z in target_chunks(targets, chunk, device=device, dtype=torch.float64, center=mean):
            cov.addmm_(z.T, z)
        cov /= n
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:k]
        comps = evecs[:, order].T.contiguous()
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
        return cls(
            components=comps.cpu(),
            mean=mean.cpu(),
            variances=evals[order].clamp_min(0).cpu(),
            total_variance=float(evals.clamp_min(0).sum()),
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P x for queries x [n, d] (same dtype and device as x)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected [n, {self.dim}], got shape {tuple(x.shape)}")
        return x @ self.components.to(device=x.device, dtype=x.dtype).T

    def project_targets(self, targets, *, chunk_size: int | None = None) -> torch.Tensor:
        """P y for targets [N, d] (may be memory-mapped), streamed: [N, K] in the targets' float dtype
        (float32 for lower precisions) on their device. Products are taken in float64."""
        targets = validate.as_targets(targets, check_values=False)
        n, d = targets.shape
        if d != self.dim:
            raise ValueError(f"targets: expected [N, {self.dim}], got shape {tuple(targets.shape)}")
        dtype = targets.dtype if targets.dtype in (torch.float32, torch.float64) else torch.float32
        out = torch.empty(n, self.k, dtype=dtype, device=targets.device)
        comps = self.components.to(device=targets.device, dtype=torch.float64).T
        chunk = chunk_size_for(self.k, n, d, chunk_size)
        for start, stop, y in target_chunks(targets, chunk, device=targets.device, dtype=torch.float64):
            out[start:stop] = (y @ comps).to(dtype)
        return out
