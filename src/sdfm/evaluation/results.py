"""What an evaluation is asked (:class:`EvalConfig`) and what it returns (:class:`EvalResult`), and the
metric names: shared by :mod:`sdfm.evaluation.evaluate`, which computes them, and
:mod:`sdfm.evaluation.report`, which writes them (so neither imports the other's internals)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sdfm.checks import check_float, check_int
from sdfm.samplers import SAMPLERS, default_method

#: metric key -> (label, lower is better)
METRICS = {
    "w2": ("W2", True),
    "energy": ("energy distance", True),
    "mmd": ("MMD^2 (RBF)", True),
    "fd_classifier": ("classifier Frechet distance", True),
    "label_tv": ("class-histogram TV", True),
    "accuracy": ("classifier accuracy given label", False),
    "fid": ("FID (Inception-v3, local weights)", True),
}


@dataclass(frozen=True)
class EvalConfig:
    """Which sampler settings to evaluate and on how many samples.

    Attributes:
        steps: step counts of the fixed-step ``solver``.
        solver: one of :data:`sdfm.samplers.SAMPLERS` (euler, midpoint, heun, rk4, meanflow); None =
            the model's own: ``meanflow`` jumps for mean-flow models, ``euler`` otherwise.
        adaptive: also evaluate dopri5 (torchdiffeq) with ``rtol`` / ``atol``; its NFE is reported.
        num: generated samples per setting (the same noise for every setting).
        seed: seed of that noise (and of subsampling).
        path_num, path_steps: samples and rk4 steps for the curvature / transport-cost measurement.
    """

    steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    solver: str | None = None
    adaptive: bool = False
    rtol: float = 1e-5
    atol: float = 1e-5
    num: int = 2000
    seed: int = 0
    path_num: int = 1000
    path_steps: int = 32

    def __post_init__(self):
        steps = tuple(int(s) for s in self.steps)
        if not steps and not self.adaptive:
            raise ValueError("steps: nothing to evaluate (no step counts and adaptive off)")
        if any(s < 1 for s in steps):
            raise ValueError(f"steps: expected integers >= 1, got {list(self.steps)}")
        object.__setattr__(self, "steps", steps)
        if self.solver is not None and self.solver not in SAMPLERS:
            raise ValueError(f"solver: expected one of {sorted(SAMPLERS)} or None, got {self.solver!r}")
        check_int("num", self.num, low=2)
        check_int("path_num", self.path_num, low=1)
        check_int("path_steps", self.path_steps, low=1)
        check_float("rtol", self.rtol, low=0, low_open=True)
        check_float("atol", self.atol, low=0, low_open=True)

    def for_model(self, mean_flow: bool) -> EvalConfig:
        """This config with ``solver`` resolved for a model (mean-flow or not); ValueError for the
        meanflow sampler on a velocity field."""
        if self.solver == "meanflow" and not mean_flow:
            raise ValueError("solver: 'meanflow' needs a mean-flow model (trained with objective meanflow)")
        if self.solver is not None:
            return self
        return replace(self, solver=default_method(mean_flow))

    def settings(self) -> list[tuple[str, str, int | None]]:
        """(name, solver, steps) for every setting, dopri5 last (``solver`` resolved)."""
        if self.solver is None:
            raise ValueError("solver: unresolved; call config.for_model(mean_flow) first")
        out = [(f"{self.solver}-{s}", self.solver, s) for s in self.steps]
        if self.adaptive:
            out.append(("dopri5", "dopri5", None))
        return out


@dataclass
class EvalResult:
    """Rows (one dict per setting: setting, solver, steps, nfe, seconds and the metrics), the flow's
    path statistics, and what the pictures need (samples per setting, trajectories, reference), all
    in normalised units."""

    rows: list[dict]
    path: dict
    info: dict
    samples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    trajectory: np.ndarray | None = field(repr=False, default=None)
    reference: np.ndarray | None = field(repr=False, default=None)

    def to_json(self) -> dict:
        return {"rows": self.rows, "path": self.path, "info": self.info}

    def save(self, stem) -> None:
        """Writes ``STEM.npz`` (samples, trajectory, reference) and then ``STEM.json`` (rows, path, info),
        each atomically; the JSON last, so its presence means both are complete."""
        import json
        from pathlib import Path

        from sdfm.artifacts.atomic import atomic_write

        stem = Path(stem)
        arrays = {f"sample:{k}": v for k, v in self.samples.items()}
        if self.trajectory is not None:
            arrays["trajectory"] = self.trajectory
        if self.reference is not None:
            arrays["reference"] = self.reference

        def write_npz(p):
            with open(p, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(stem.with_suffix(".npz"), write_npz)
        atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(self.to_json())))

    @classmethod
    def load(cls, stem) -> EvalResult:
        """The result written by :meth:`save` (ValueError when missing or damaged)."""
        import json
        from pathlib import Path

        stem = Path(stem)
        try:
            data = json.loads(stem.with_suffix(".json").read_text())
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            rows, path, info = data["rows"], data["path"], data["info"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"eval result {stem}: cannot be read ({exc})") from None
        samples = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("sample:")}
        return cls(rows, path, info, samples, arrays.get("trajectory"), arrays.get("reference"))
