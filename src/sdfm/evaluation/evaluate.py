"""Evaluation of trained flows across step budgets, against held-out real data.

For each sampler setting (a fixed-step solver at 1, 2, 4, 8, 16 steps, and optionally dopri5) the
same noise x0 (fixed seed) is integrated and the samples are compared with held-out data: exact W2
(POT, on the samples as drawn, <= 5k), energy distance and RBF-MMD, and — for labelled data — the
Frechet distance in the feature space of a small classifier trained on the real training data
(cached in the run), the total variation of the predicted-class histogram and, for conditional
models, the classifier accuracy given the label. The flow itself is measured once: curvature of its
ODE paths and transport cost (rk4, 32 steps). All distances are in the normalised units the model
was trained in (data minus the per-feature mean, divided by one global scale).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sdfm.artifacts.classifier import load_classifier, save_classifier
from sdfm.evaluation.report import write_report
from sdfm.evaluation.results import EvalConfig, EvalResult
from sdfm.metrics import (
    FeatureClassifier,
    accuracy,
    classifier_features,
    energy_distance,
    fit_classifier,
    frechet_distance,
    label_tv,
    mmd_rbf,
    path_stats,
    wasserstein2,
)
from sdfm.samplers import SamplingDiverged, integrate

EVAL_DIR = "eval"
CLASSIFIER_FILE = "classifier.safetensors"


@dataclass
class ClassifierScorer:
    """A classifier and what scoring needs: reference features and real class frequencies."""

    model: FeatureClassifier
    class_freq: torch.Tensor
    test_accuracy: float | None = None

    def scores(self, x: torch.Tensor, ref_features: torch.Tensor, labels=None) -> dict:
        out = {
            "fd_classifier": frechet_distance(classifier_features(self.model, x), ref_features),
            "label_tv": label_tv(self.model, x, self.class_freq),
        }
        if labels is not None:
            out["accuracy"] = accuracy(self.model, x, labels)
        return out


def _distances(x: torch.Tensor, ref: torch.Tensor, seed: int) -> dict:
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 (same subsample for every setting)
    return {
        "w2": wasserstein2(x, ref, generator=gen()),
        "energy": energy_distance(x, ref, generator=gen()),
        "mmd": mmd_rbf(x, ref, generator=gen()),
    }


@torch.no_grad()
def evaluate_model(
    model,
    reference,
    *,
    config: EvalConfig | None = None,
    scorer: ClassifierScorer | None = None,
    train_data=None,
    num_classes: int | None = None,
    progress: bool | str = False,
) -> EvalResult:
    """Evaluates a velocity field or mean-flow ``model`` (on its device) against ``reference`` [m, d]
    (held-out data,
    normalised units; a fixed random subset of ``config.num`` points when larger).

    Args:
        scorer: classifier scores for labelled data (None: skipped).
        train_data: [N, d] training data; if given, a first row "data" scores ``num`` training points
            against the reference with the same metrics (the floor a perfect sampler reaches with
            this many samples).
        num_classes: the model's number of classes when it is conditional (labels for the samples
            are drawn from the scorer's class frequencies, and accuracy is reported).
        progress: a tqdm bar over the settings (a string: the bar's label, e.g. "SD-FM eval").
    """
    config = EvalConfig() if config is None else config
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    config = config.for_model(bool(getattr(getattr(model, "config", None), "mean_flow", False)))
    ref, x0, cond = _inputs(reference, config, device, scorer, num_classes)
    ref_features = classifier_features(scorer.model, ref) if scorer is not None else None

    rows: list[dict] = []

    def score(x: torch.Tensor, labels) -> dict:
        out = _distances(x, ref, config.seed)
        if scorer is not None:
            out.update(scorer.scores(x, ref_features, labels))
        return out

    samples = {}
    settings = config.settings()
    label = progress if isinstance(progress, str) else "eval"
    # one tick per sampler setting, plus the data floor and the path statistics
    bar = tqdm(
        total=len(settings) + 1 + (train_data is not None),
        disable=not progress,
        desc=label,
        unit="part",
        dynamic_ncols=True,
        leave=False,
    )
    if train_data is not None:
        bar.set_postfix(part="real data floor")
        rows.append(_floor_row(train_data, reference, config, score))
        bar.update(1)
    _sample_settings(model, x0, cond, settings, config, score, rows, samples, bar)
    bar.set_postfix(part="path curvature")
    path, traj = _paths(model, x0, cond, config)
    bar.update(1)
    bar.close()
    info = {
        "config": asdict(config),
        "reference_size": int(ref.shape[0]),
        "classifier_test_accuracy": None if scorer is None else scorer.test_accuracy,
    }
    return EvalResult(
        rows=rows,
        path=path,
        info=info,
        samples=samples,
        trajectory=traj,
        reference=ref.numpy(),
    )


def _sample_settings(model, x0, cond, settings, config, score, rows: list, samples: dict, bar) -> None:
    """Integrates the same noise with every sampler setting, scores the samples and appends their rows."""
    for name, solver, steps in settings:
        bar.set_postfix(part=name)
        t0 = time.perf_counter()
        res = integrate(
            model, x0, steps=steps or 1, method=solver, cond=cond, rtol=config.rtol, atol=config.atol
        )
        seconds = time.perf_counter() - t0
        x = res.x.float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise SamplingDiverged(f"{name}: the sampler returned NaN/Inf")
        samples[name] = x.numpy()
        labels = None if cond is None else cond.cpu()
        rows.append(
            {
                "setting": name,
                "solver": solver,
                "steps": steps,
                "nfe": int(res.nfe),
                "seconds": seconds,
                **score(x, labels),
            }
        )
        bar.update(1)


def _inputs(reference, config: EvalConfig, device, scorer, num_classes):
    """(reference subset [<= num, d], noise x0 [num, d], labels of the samples or None), seeded."""
    ref = torch.as_tensor(reference).to("cpu", torch.float32)
    if ref.dim() != 2 or ref.shape[0] < 2:
        raise ValueError(f"reference: expected [m >= 2, d], got {list(ref.shape)}")
    if ref.shape[0] > config.num:  # equal-size sets: the reference's self-terms stay cheap
        ref = ref[
            torch.randperm(ref.shape[0], generator=torch.Generator().manual_seed(config.seed))[: config.num]
        ]
    dim = ref.shape[1]
    gen = torch.Generator(device=device).manual_seed(config.seed)
    x0 = torch.randn(config.num, dim, generator=gen, device=device)
    cond = None
    if num_classes:
        if scorer is None:
            raise ValueError("num_classes: a conditional model needs a scorer (class frequencies)")
        freq = scorer.class_freq.to(device, torch.float64)
        cond = torch.multinomial(freq, config.num, replacement=True, generator=gen)
    return ref, x0, cond


def _floor_row(train_data, reference, config: EvalConfig, score) -> dict:
    """The "data" row: ``num`` training points scored like samples (the floor of a perfect sampler)."""
    train = torch.as_tensor(train_data).to("cpu", torch.float32)
    full_ref = torch.as_tensor(reference).to("cpu", torch.float32)
    # without held-out data (reference = training data) take another subset than the reference's,
    # so that the floor does not compare a set with itself
    same = train.shape == full_ref.shape and bool(torch.equal(train, full_ref))
    pick = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(config.seed + int(same)))
    floor = score(train[pick[: config.num]], None)
    return {"setting": "data", "solver": None, "steps": None, "nfe": 0, "seconds": 0.0, **floor}


def _paths(model, x0, cond, config: EvalConfig):
    """(path statistics, trajectories [T + 1, k, d] of up to 200 paths) of the flow, by rk4."""
    k = min(config.path_num, config.num)
    stats = path_stats(
        model, x0[:k], steps=config.path_steps, method="rk4", cond=None if cond is None else cond[:k]
    )
    traj = integrate(
        model,
        x0[: min(k, 200)],
        steps=config.path_steps,
        method="rk4",
        trajectory=True,
        cond=None if cond is None else cond[: min(k, 200)],
    ).trajectory
    path = {
        "curvature": stats.curvature,
        "transport_cost": stats.transport_cost,
        "solver": f"rk4-{config.path_steps}",
        "samples": k,
    }
    return path, traj.float().cpu().numpy()


# --- classifier cached in a run ------------------------------------------------------------------


def classifier_layout(dataset_name: str, image_shape, dim: int):
    """The image shape the classifier sees: the data's (C, H, W), (1, 1, d) for 1-D signals
    (a 1-D CNN), None (MLP) otherwise."""
    from sdfm.data.registry import SIGNALS

    if image_shape:
        return tuple(image_shape)
    if dataset_name in SIGNALS:
        return (1, 1, int(dim))
    return None


def fit_scorer(
    x_train, labels, *, layout, reference=None, ref_labels=None, seed: int = 0
) -> ClassifierScorer:
    """Trains the classifier on normalised training data and measures its held-out accuracy."""
    x_train = torch.as_tensor(x_train).float()
    labels = torch.as_tensor(labels).long()
    model = fit_classifier(x_train, labels, image_shape=layout, seed=seed)
    freq = torch.bincount(labels, minlength=model.config.num_classes).double()
    test_acc = None
    if reference is not None and ref_labels is not None:
        test_acc = accuracy(model, reference, ref_labels)
    return ClassifierScorer(model, freq / freq.sum(), test_acc)


# --- a run folder ---------------------------------------------------------------------------------


@dataclass
class RunData:
    """The normalised training and held-out data of a run, with labels."""

    train: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray
    reference_labels: np.ndarray | None
    reference_name: str
    heldout: bool
    name: str
    image_shape: tuple | None


def run_data(info: dict, reference: str | None = None) -> RunData:
    """Loads a run's training data and its held-out data (``reference`` spec, default the built-in
    test split; the training data itself when nothing is held out, flagged ``heldout=False``)."""
    from sdfm.data import fingerprint, heldout_spec, load_dataset
    from sdfm.data.normalize import Normalization
    from sdfm.data.registry import reference_spec

    spec = info["data"]["spec"]
    dataset = load_dataset(spec)
    if fingerprint(np.ascontiguousarray(dataset.x)) != info["data"]["fingerprint"]:
        raise ValueError(f"run: the data {spec!r} no longer match the run's fingerprint")
    norm = Normalization.from_dict(info["normalization"])
    ref_spec = reference_spec(reference, spec) if reference else heldout_spec(spec)
    heldout = ref_spec is not None
    ref = load_dataset(ref_spec) if heldout else dataset
    if ref.x.shape[1] != dataset.x.shape[1]:
        raise ValueError(
            f"reference: {ref_spec} has dimension {ref.x.shape[1]}, the run's data {dataset.x.shape[1]}"
        )
    return RunData(
        train=norm.apply(dataset.x),
        labels=dataset.labels,
        reference=norm.apply(ref.x),
        reference_labels=ref.labels if heldout else dataset.labels,
        reference_name=ref_spec if heldout else f"{spec} (training data: nothing held out)",
        heldout=heldout,
        name=dataset.name,
        image_shape=dataset.image_shape,
    )


def cached_scorer(
    cache: Path | None,
    fingerprint: str,
    *,
    train,
    labels,
    name: str,
    image_shape=None,
    reference=None,
    ref_labels=None,
    seed: int = 0,
) -> ClassifierScorer | None:
    """The classifier of normalised training data ``train`` [N, d] with ``labels``: read from ``cache``
    when it was trained on data with this ``fingerprint``, else trained (held-out accuracy measured
    on ``reference`` when given) and written there. None for unlabelled data."""
    if labels is None or int(labels.max()) < 1:
        return None
    stored = load_classifier(cache, fingerprint) if cache is not None else None
    scorer = None if stored is None else ClassifierScorer(*stored)
    if scorer is None:
        layout = classifier_layout(name, image_shape, train.shape[1])
        scorer = fit_scorer(
            train, labels, layout=layout, reference=reference, ref_labels=ref_labels, seed=seed
        )
        if cache is not None:
            save_classifier(cache, scorer.model, scorer.class_freq, scorer.test_accuracy, fingerprint)
    return scorer


def run_scorer(run_dir: Path, info: dict, data: RunData, *, seed: int = 0) -> ClassifierScorer | None:
    """The run's classifier, cached in ``eval/classifier.safetensors``; None for unlabelled data."""
    return cached_scorer(
        Path(run_dir) / EVAL_DIR / CLASSIFIER_FILE,
        info["data"]["train_fingerprint"],
        train=data.train,
        labels=data.labels,
        name=data.name,
        image_shape=data.image_shape,
        reference=data.reference if data.heldout else None,
        ref_labels=data.reference_labels,
        seed=seed,
    )


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig | None = None,
    *,
    reference: str | None = None,
    device: str | torch.device = "cpu",
    ema: bool = True,
    progress: bool = False,
    write: bool = True,
    fid_weights: str | Path | None = None,
    out: str | Path | None = None,
) -> EvalResult:
    """Evaluates the newest checkpoint of a run and (``write``) writes ``out`` (default
    ``RUN_DIR/eval/``): ``metrics.json``, ``report.md``, ``samples.png``, ``metrics_vs_nfe.png``,
    ``trajectories.png``.
    With ``fid_weights`` (a local Inception-v3 FID weights file; image runs only; needs the ``fid``
    extra) every setting also gets real FID against the reference, in data units."""
    config = EvalConfig() if config is None else config
    from sdfm.train import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, ema=ema)
    data = run_data(run.info, reference)
    if fid_weights is not None:
        from sdfm.metrics.fid import fid_metric_class

        if data.image_shape is None:
            raise ValueError(f"fid_weights: real FID needs image data; {data.name} rows are not images")
        fid_metric_class()  # fail before the work when the extra is missing
    scorer = run_scorer(run_dir, run.info, data, seed=config.seed)
    num_classes = run.info["model"]["config"].get("num_classes")
    result = evaluate_model(
        run.model,
        data.reference,
        config=config,
        scorer=scorer,
        train_data=data.train,
        num_classes=num_classes,
        progress=progress,
    )
    if fid_weights is not None:
        from sdfm.metrics import inception_fid

        real = run.normalization.undo(data.reference)
        for row in result.rows:
            if row["setting"] in result.samples:
                row["fid"] = inception_fid(
                    real,
                    run.normalization.undo(result.samples[row["setting"]]),
                    image_shape=data.image_shape,
                    weights=fid_weights,
                    device=device,
                )
    result.info.update(
        run=str(run_dir),
        step=run.step,
        reference=data.reference_name,
        heldout=data.heldout,
        coupling=run.info["coupling"]["name"],
        data=run.info["data"]["spec"],
    )
    if write:
        label = run.info["coupling"]["name"]
        write_report(
            run_dir / EVAL_DIR if out is None else Path(out),
            {label: result},
            title=f"sdfm eval: {run_dir}",
            image_shape=data.image_shape,
            display=run.normalization.undo,
            notes=_notes(result),
        )
    return result


def _notes(result: EvalResult) -> list[str]:
    info = result.info
    lines = [
        f"Data `{info.get('data')}`, checkpoint step {info.get('step')}; "
        f"reference: `{info.get('reference')}` "
        f"({info['reference_size']} points); {info['config']['num']} samples per setting from the same noise "
        f"(seed {info['config']['seed']}). Distances in the normalised training units.",
    ]
    if not info.get("heldout", True):
        lines.append("**No held-out data**: the reference is the training data itself.")
    if info.get("classifier_test_accuracy") is not None:
        lines.append(
            f"Classifier (trained on the real training data, cached in eval/{CLASSIFIER_FILE}): held-out "
            f"accuracy {info['classifier_test_accuracy']:.3f}. Its Frechet distance is not FID."
        )
    return lines
