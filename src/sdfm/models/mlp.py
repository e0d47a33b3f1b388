"""MLP velocity field for vector data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from sdfm.checks import check_float, check_int
from sdfm.models.embeddings import Conditioning, rename_legacy_keys

#: bounds on configs read from files (a corrupt or hostile run.json must not allocate terabytes)
MAX_DIM = 1 << 24
MAX_PARAMETERS = 1 << 31


@dataclass(frozen=True)
class MLPConfig:
    """Hyper-parameters of :class:`MLPVelocity`.

    Attributes:
        dim: data dimension d.
        hidden: width of the hidden layers.
        depth: number of hidden residual blocks.
        time_dim: size of the sinusoidal time features.
        num_classes: number of class labels (None = unconditional).
        cond_dim: size of continuous condition vectors z (None = none); exclusive with num_classes.
        mean_flow: also embed the interval r - t (a mean-flow model u(x, t, r); see
            :mod:`sdfm.flow.meanflow`).
        time_scale: factor on t in the time embeddings (None: 1000, or 1 for mean-flow models;
            see :func:`sdfm.models.embeddings.resolve_time_scale`).
    """

    dim: int
    hidden: int = 256
    depth: int = 4
    time_dim: int = 64
    num_classes: int | None = None
    cond_dim: int | None = None
    mean_flow: bool = False
    time_scale: float | None = None

    def __post_init__(self):
        w = "mlp"
        check_int("dim", self.dim, low=1, high=MAX_DIM, where=w)
        check_int("hidden", self.hidden, low=1, high=65536, where=w)
        check_int("depth", self.depth, low=0, high=1024, where=w)
        check_int("time_dim", self.time_dim, low=2, high=65536, where=w)
        check_int("num_classes", self.num_classes, low=1, high=1 << 24, none=True, where=w)
        check_int("cond_dim", self.cond_dim, low=1, high=MAX_DIM, none=True, where=w)
        check_float("time_scale", self.time_scale, low=0, low_open=True, none=True, where=w)
        params = 2 * self.depth * self.hidden * (self.hidden + 1) + 2 * self.dim * self.hidden
        if params > MAX_PARAMETERS:
            raise ValueError(
                f"mlp: about {params:.3g} parameters (hidden {self.hidden}, depth {self.depth}, dim "
                f"{self.dim}); sdfm builds at most {MAX_PARAMETERS:.3g}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.lin1(nn.functional.silu(self.norm(h) + emb))
        return h + self.lin2(nn.functional.silu(z))


class MLPVelocity(nn.Module):
    """v(x [n, d], t [n], cond | None, r [n] | None) -> [n, d]: residual MLP; the embeddings of time
    (and of the label or condition vector, and for mean-flow models of r - t) are added inside every
    block."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        w = config.hidden
        self.embed = Conditioning.from_config(config, w, config.time_dim)
        self._register_load_state_dict_pre_hook(rename_legacy_keys)
        self.inp = nn.Linear(config.dim, w)
        self.blocks = nn.ModuleList(_Block(w) for _ in range(config.depth))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.SiLU(), nn.Linear(w, config.dim))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"x: expected [n, {self.config.dim}], got {list(x.shape)}")
        emb = self.embed(t, cond, r, x.shape[0], x.device)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).to(x.dtype)
