"""Super-resolution with continuous conditions: the couplings for the task (:class:`SuperResTask`, in
:mod:`sdfm.data.superres`) and PSNR of conditional samples against the true high-resolution images.

Conditions are built in the normalised training units: z = avgpool(x, factor) + noise * xi, with a
numpy seed derived from the run's seed and the split (so a run's conditions can be rebuilt exactly).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sdfm.data.superres import SuperResTask, upsample
from sdfm.metrics import psnr
from sdfm.samplers import default_method, integrate


def superres_coupling(
    coupling: str,
    targets: torch.Tensor,
    conditions: torch.Tensor,
    task: SuperResTask,
    *,
    generator: torch.Generator | None = None,
    solver=None,
    progress: bool = False,
):
    """(coupling, solver result or None) for continuous conditions: ``independent`` (x1 = y_i with its
    own z_i) or ``semidiscrete`` (the augmented problem solved with ``solver``, default settings:
    :func:`sdfm.couplings.semidiscrete.augmented_coupling`)."""
    from sdfm.couplings import IndependentCoupling
    from sdfm.couplings.semidiscrete import augmented_coupling

    if coupling == "independent":
        return IndependentCoupling(targets, conditions=conditions), None
    if coupling != "semidiscrete":
        raise ValueError(
            f"coupling: continuous conditions support independent or semidiscrete, got {coupling!r}"
        )
    return augmented_coupling(
        targets, conditions, task.beta, generator=generator, solver=solver, progress=progress
    )


@torch.no_grad()
def evaluate_superres(
    model,
    high: np.ndarray,
    conditions: np.ndarray,
    *,
    undo,
    data_range: float,
    image_shape,
    factor: int,
    steps=(1, 2, 4, 8),
    solver: str = "euler",
    seed: int = 0,
) -> dict:
    """PSNR (dB, data units) of one conditional sample per held-out condition against the true image,
    for each step count; plus the PSNR of the upsampled condition (the naive baseline).

    Args:
        model: velocity field ``v(x, t, z)`` with ``cond_dim = k``.
        high: true normalised images [m, d]; conditions: their conditions [m, k] (normalised units).
        undo: maps normalised rows back to data units; data_range: the pixel range in data units.

    Returns:
        ``{"rows": [{setting, steps, nfe, psnr, seconds}], "upsampled_psnr": float, "samples": {...}}``.
    """
    device = next(model.parameters()).device
    z = torch.as_tensor(conditions, dtype=torch.float32, device=device)
    truth = undo(np.asarray(high, dtype=np.float32))
    gen = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.randn(z.shape[0], high.shape[1], generator=gen, device=device)
    rows, samples = [], {}
    for k in steps:
        t0 = time.perf_counter()
        res = integrate(model, x0, steps=k, method=solver, cond=z)
        out = undo(res.x.float().cpu().numpy())
        samples[f"{solver}-{k}"] = out
        rows.append(
            {
                "setting": f"{solver}-{k}",
                "steps": k,
                "nfe": res.nfe,
                "psnr": psnr(out, truth, data_range),
                "seconds": time.perf_counter() - t0,
            }
        )
    base = undo(upsample(np.asarray(conditions), image_shape, factor))
    return {"rows": rows, "upsampled_psnr": psnr(base, truth, data_range), "samples": samples}


def superres_heldout(info: dict, normalization, *, reference: str | None = None):
    """(task, true normalised images [m, d], their conditions [m, k], data range, image shape) of a
    super-resolution run's held-out data (the test split of its dataset, or ``reference``)."""
    from sdfm.data import heldout_spec, load_dataset

    task = SuperResTask(**info["coupling"]["superres"])
    spec = reference or heldout_spec(info["data"]["spec"])
    if spec is None:
        raise ValueError(f"reference: {info['data']['spec']} has no held-out split; pass one")
    ref = load_dataset(spec)
    train = load_dataset(info["data"]["spec"])
    high = normalization.apply(ref.x)
    image_shape = tuple(info["data"]["image_shape"])
    z = task.conditions(high, image_shape, seed=int(info["seed"]), split="test")
    data_range = float(train.x.max() - train.x.min())
    return task, high, z, data_range, image_shape


def evaluate_superres_run(
    run_dir,
    *,
    steps=(1, 2, 4, 8),
    solver: str | None = None,
    seed: int = 0,
    reference: str | None = None,
    device="cpu",
    ema: bool = True,
    write: bool = True,
    out=None,
) -> dict:
    """PSNR of a super-resolution run on its held-out images; writes ``out`` (default ``RUN_DIR/eval/``:
    metrics.json, report.md, samples.png: condition, samples per setting, truth)."""
    import json
    from pathlib import Path

    from sdfm.artifacts.atomic import atomic_write
    from sdfm.evaluation.plots import plot_image_rows
    from sdfm.train import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, ema=ema)
    task, high, z, data_range, image_shape = superres_heldout(
        run.info, run.normalization, reference=reference
    )
    mean_flow = bool(run.info["model"]["config"].get("mean_flow", False))
    solver = solver or default_method(mean_flow)
    result = evaluate_superres(
        run.model,
        high,
        z,
        undo=run.normalization.undo,
        data_range=data_range,
        image_shape=image_shape,
        factor=task.factor,
        steps=steps,
        solver=solver,
        seed=seed,
    )
    result["info"] = {
        "run": str(run_dir),
        "step": run.step,
        "coupling": run.info["coupling"]["name"],
        "task": task.to_dict(),
        "heldout": int(high.shape[0]),
        "data_range": data_range,
    }
    if write:
        out = run_dir / "eval" if out is None else Path(out)
        out.mkdir(parents=True, exist_ok=True)
        samples = result.pop("samples")
        atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(result, indent=2)))
        pictures = {"condition": run.normalization.undo(upsample(z, image_shape, task.factor))}
        pictures.update({name: x for name, x in samples.items()})
        pictures["truth"] = run.normalization.undo(high)
        plot_image_rows(pictures, out / "samples.png", image_shape=image_shape)
        lines = [
            f"# sdfm eval (super-resolution): {run_dir}",
            "",
            f"{result['info']['coupling']} run, checkpoint step {run.step}; {high.shape[0]} held-out images, "
            f"one sample each from its condition (x{task.factor} average pooling + noise {task.noise:g}, "
            f"normalised units); PSNR in data units (range {data_range:g}), higher is better.",
            "",
            "| setting | NFE | PSNR (dB) |",
            "|---|---|---|",
            *[f"| {r['setting']} | {r['nfe']} | {r['psnr']:.3f} |" for r in result["rows"]],
            f"| upsampled condition | 0 | {result['upsampled_psnr']:.3f} |",
            "",
            "![samples](samples.png)",
            "",
        ]
        atomic_write(out / "report.md", lambda p: p.write_text("\n".join(lines)))
        result["samples"] = samples
    return result
