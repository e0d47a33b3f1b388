"""What every sampler shares (layer L1): the counting field wrapper around a model, the result type,
the null label and the divergence error. :mod:`sdfm.samplers.fixed` and :mod:`sdfm.samplers.adaptive`
both build on it (neither imports the other's internals)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleResult:
    """Samples x1 [n, d], the number of field evaluations used, and optionally the trajectory.

    ``trajectory`` is [K, n, d] at ``times`` [K] (K = steps + 1 for fixed steps, the requested
    evaluation times for dopri5); None unless asked for.
    """

    x: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None
    times: torch.Tensor | None = None


#: the label that means "no label" (label dropout, the unconditional branch of guidance)
NULL_LABEL = -1


class CountingField:
    """Wraps ``model(x, t [n], cond)`` as ``f(x, t_scalar)`` and counts network evaluations per sample.

    With ``guidance`` w (classifier-free guidance) the field is v(x, t, null) + w (v(x, t, c) -
    v(x, t, null)), the null label being :data:`NULL_LABEL`: both branches run as one batch of 2n
    and count as 2 evaluations; w = 1 is the plain conditional field (1 evaluation).
    """

    def __init__(self, model, cond: torch.Tensor | None = None, guidance: float | None = None):
        self.guidance = None if guidance is None or float(guidance) == 1.0 else float(guidance)
        if self.guidance is not None and cond is None:
            raise ValueError("guidance: classifier-free guidance needs labels (cond)")
        self.model, self.cond, self.nfe = model, cond, 0

    def _inputs(self, x: torch.Tensor, t, r, copies: int):
        """t (and r, only when given: plain velocity fields take no r) as [copies * n] tensors."""
        n = copies * x.shape[0]
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
        if r is None:
            return tt, {}
        return tt, {"r": torch.as_tensor(r, dtype=x.dtype, device=x.device).reshape(-1).expand(n)}

    def branches(self, x: torch.Tensor, t, r=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(v(x, t, cond), v(x, t, null)) in one batch of 2n; counts 2 evaluations."""
        self.nfe += 2
        n = x.shape[0]
        tt, extra = self._inputs(x, t, r, 2)
        labels = torch.cat([self.cond, torch.full_like(self.cond, NULL_LABEL)])
        v = self.model(torch.cat([x, x]), tt, labels, **extra)
        return v[:n], v[n:]

    def __call__(self, x: torch.Tensor, t, r=None) -> torch.Tensor:
        if self.guidance is None:
            self.nfe += 1
            tt, extra = self._inputs(x, t, r, 1)
            return self.model(x, tt, self.cond, **extra)
        v_cond, v_null = self.branches(x, t, r)
        return v_null + self.guidance * (v_cond - v_null)


class SamplingDiverged(ValueError):
    """The integrated state became NaN or Inf (the model returned non-finite values)."""
