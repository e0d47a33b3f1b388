"""Optional TensorBoard logging of a training run (``sdfm train --log tensorboard``, extra
``sdfm[tensorboard]``): the metrics of every log line (loss, transport cost, pairs/s, the pairing
fraction, learning rate, gradient norm) and, at every checkpoint, the picture ``sdfm sample`` draws of
samples from the EMA model (8 Euler steps, or one mean-flow jump, from fixed noise). ``metrics.jsonl``
is written either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: the scalars logged from each metrics record, under their TensorBoard tags
SCALARS = {
    "loss": "train/loss",
    "transport_cost": "train/transport_cost",
    "pairs_per_s": "speed/pairs_per_s",
    "pairing_fraction": "speed/pairing_fraction",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
}
FOLDER = "tensorboard"


class TensorBoardLog:
    """Writes ``RUN_DIR/tensorboard/`` (one event file per process start; a resumed run appends).

    Args:
        run_dir: the run folder.
        dim: the data dimension (flattened).
        image_shape: (C, H, W) of image data (an image grid), else None (a scatter, on the top two
            principal directions above 2-D).
        undo: maps training-space samples to data units (the run's normalisation).
        num_classes: class-conditional models get the classes in turn.
        sample_grid: draw samples at checkpoints (off for models that need condition vectors).
        seed: seed of the fixed noise of the sample grids.
    """

    def __init__(
        self, run_dir, *, dim: int, image_shape=None, undo=None, num_classes=None, sample_grid=True, seed=0
    ):
        from sdfm.extras import require

        writer_cls = require("torch.utils.tensorboard", "--log tensorboard").SummaryWriter
        self.writer = writer_cls(log_dir=str(Path(run_dir) / FOLDER))
        self.dim = int(dim)
        self.image_shape = image_shape
        self.undo = undo or (lambda x: x.detach().float().cpu().numpy())
        self.num_classes = num_classes
        self.sample_grid = sample_grid
        self.seed = seed

    def log(self, record: dict) -> None:
        step = int(record["step"])
        for key, tag in SCALARS.items():
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    @torch.no_grad()
    def checkpoint(self, step: int, model) -> None:
        if not self.sample_grid:
            return
        from sdfm.evaluation.plots import samples_figure
        from sdfm.samplers import default_method, integrate

        device = next(model.parameters()).device
        dim = self.dim
        gen = torch.Generator(device=device).manual_seed(self.seed)
        x0 = torch.randn(64 if self.image_shape else 1000, dim, generator=gen, device=device)
        cond = None if not self.num_classes else torch.arange(x0.shape[0], device=device) % self.num_classes
        mean_flow = bool(getattr(model.config, "mean_flow", False))
        method = default_method(mean_flow)
        x = self.undo(integrate(model, x0, steps=1 if mean_flow else 8, method=method, cond=cond).x)
        figure = samples_figure(np.asarray(x), image_shape=self.image_shape, title=f"step {step}")
        self.writer.add_figure("samples", figure, step)  # (closes the figure)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
