"""The registry of couplings (layer L1): name -> builder from a run spec, used by the run recipe
(:func:`sdfm.train.fit`) and by ``sdfm train --coupling`` for its choices.

A builder is ``build(spec, ctx) -> (coupling, info)``: ``spec`` is the run's
:class:`sdfm.train.RunSpec` (read by attribute), ``ctx`` a :class:`CouplingContext` with the prepared
data and the run folder; ``info`` is what run.json records about the coupling beyond its name (on
``--resume`` the builder gets the recorded entry as ``ctx.stored`` and must rebuild the same
coupling from it). Registration names the spec options the coupling reads, so that the recipe refuses
the others instead of ignoring them. Adding a coupling is one module with its class and
``@register_coupling("name", options=...)`` on its builder (imported by ``sdfm.couplings``), plus
its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: name -> Registration
COUPLINGS: dict[str, Registration] = {}

#: spec options that only some couplings read (the recipe refuses them for the others when set)
COUPLING_OPTIONS = (
    "eps",
    "potential",
    "pca",
    "search",
    "pairing_precision",
    "step_scales",
    "ot_method",
    "ot_batch_size",
)


@dataclass(frozen=True)
class Registration:
    """A registered coupling: its builder, the spec options it reads, and whether it pairs with
    continuous conditions (super-resolution)."""

    name: str
    build: Callable
    options: tuple[str, ...] = ()
    conditions: bool = False


def register_coupling(name: str, *, options: tuple[str, ...] = (), conditions: bool = False):
    """Decorator: registers ``build(spec, ctx) -> (coupling, info)`` under ``name``."""
    unknown = set(options) - set(COUPLING_OPTIONS)
    if unknown:
        raise ValueError(f"options: {sorted(unknown)} are not coupling options {COUPLING_OPTIONS}")

    def add(build):
        COUPLINGS[name] = Registration(name, build, tuple(options), conditions)
        return build

    return add


@dataclass
class CouplingContext:
    """What a builder gets besides the spec.

    Attributes:
        targets: normalised training data [N, d] on the device.
        labels: class labels [N] (CPU) when the data have them, else None.
        conditions: continuous conditions [N, k] on the device (super-resolution), else None.
        task: the :class:`sdfm.data.superres.SuperResTask` behind ``conditions``, else None.
        run_dir: the run folder (builders may save files there, e.g. the solved potential).
        stored: the coupling's run.json entry when resuming, else None.
        device: the compute device; seed: the run's seed; batch_size: pairs per training step.
        data_name: the data spec; fingerprint_raw / fingerprint_train: sha256 of the raw and the
            normalised data.
        progress: show progress bars; log: one-line messages (stderr in the CLI).
    """

    targets: torch.Tensor
    labels: torch.Tensor | None
    run_dir: Path
    device: torch.device
    seed: int
    batch_size: int
    data_name: str
    fingerprint_raw: str
    fingerprint_train: str
    conditions: torch.Tensor | None = None
    task: object | None = None
    stored: dict | None = None
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda message: None)
