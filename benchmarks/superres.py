"""Super-resolution of digits with continuous conditions: SD-FM (augmented cost) against I-FM.

Each 8x8 digit (scikit-learn, train split, 1,438 images) gets the condition z = its 4x4 average-pooled
copy plus Gaussian noise (std 0.1, normalised units). I-FM trains v(x_t, t, z_i) on independent pairs
(noise, y_i) with y_i's own condition; SD-FM pairs each noise x0 and condition z0 = z_i by the
semidiscrete potential of the augmented cost 1/2|x - y|^2 + beta 1/2|z - z'|^2 (query [x0, sqrt(beta) z0],
keys [y_j, sqrt(beta) z_j]), for beta in --betas. Same MLP (width 256, 4 blocks, condition embedding),
same initial weights, 3000 steps of 256, lr 1e-3, EMA 0.999, each trained by the run recipe of
``sdfm train --superres`` (``sdfm.train.fit``). Evaluation: one sample per held-out
condition (the 359 test digits, conditions with an independent noise draw), PSNR in data units
(range 16) at 1, 2, 4, 8 Euler steps; and the naive upsampled condition.

    python benchmarks/superres.py [--seeds 0,1,2] [--steps 3000] [--betas 3,10,30]

Writes benchmarks/results/superres.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, save  # noqa: E402
from sdfm.artifacts import load_potential  # noqa: E402
from sdfm.couplings import SemidiscreteCoupling  # noqa: E402
from sdfm.data import load_dataset  # noqa: E402
from sdfm.data.normalize import Normalization  # noqa: E402
from sdfm.data.superres import SuperResTask  # noqa: E402
from sdfm.evaluation.superres import evaluate_superres  # noqa: E402
from sdfm.train import RunSpec, TrainConfig, fit  # noqa: E402


def _cell(values) -> str:
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--betas", default="3,10,30")
    parser.add_argument("--tag", default="superres")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    train_set, test_set = load_dataset("digits"), load_dataset("digits:split=test")
    shape = train_set.image_shape
    norm = Normalization.fit(train_set.x, "standard")
    x_train, x_test = norm.apply(train_set.x), norm.apply(test_set.x)
    methods = [("I-FM", "independent", SuperResTask())] + [
        (f"SD-FM beta={b:g}", "semidiscrete", SuperResTask(beta=b)) for b in betas
    ]
    payload = {"machine": machine(), "seeds": seeds, "steps": args.steps, "methods": [m[0] for m in methods]}
    rows, chi2, mismatch, t_all = [], {}, {}, time.perf_counter()
    for seed in seeds:
        for name, coupling_name, task in methods:
            z_train = task.conditions(x_train, shape, seed=seed, split="train")
            z_test = task.conditions(x_test, shape, seed=seed, split="test")
            targets, conds = torch.from_numpy(x_train), torch.from_numpy(z_train)
            spec = RunSpec(
                data="digits",
                coupling=coupling_name,
                superres=task.factor,
                beta=task.beta if coupling_name == "semidiscrete" else None,
                train=TrainConfig(steps=args.steps, seed=seed, checkpoint_every=0),
            )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:  # the run recipe of sdfm train --superres
                out = fit(spec, Path(tmp) / "run", progress=False, log=lambda message: None)
                potential = Path(tmp) / "run" / "potential.safetensors"
                pf = load_potential(potential) if potential.exists() else None
            total_s = time.perf_counter() - t0
            solve_s = 0.0 if pf is None else float(pf.meta["seconds"])
            train_s = total_s - solve_s
            if pf is not None:
                chi2.setdefault(name, []).append(pf.chi2)
                # how far the paired data point's condition lies from the noise's: |z0 - z_j| / |z0 - z_i'|
                # (i' a random data point): 0 = paired within the own condition, 1 = unrelated
                coupling = SemidiscreteCoupling(
                    targets,
                    pf.potential,
                    eps=pf.eps,
                    weights=pf.weights,
                    duplicates=pf.duplicates,
                    conditions=conds,
                    beta=task.beta,
                )
                probe = coupling.sample(4096, generator=torch.Generator().manual_seed(10_000 + seed))
                far = (probe.cond - conds[probe.index]).norm(dim=1).mean()
                rand = (probe.cond - conds[torch.randint(len(conds), (len(probe),))]).norm(dim=1).mean()
                mismatch.setdefault(name, []).append(float(far / rand))
            ev = evaluate_superres(
                out.ema,
                x_test,
                z_test,
                undo=norm.undo,
                data_range=16.0,
                image_shape=shape,
                factor=task.factor,
                seed=seed,
            )
            for r in ev["rows"]:
                rows.append({**r, "method": name, "seed": seed})
            rows.append({"setting": "upsampled", "psnr": ev["upsampled_psnr"], "method": name, "seed": seed})
            print(
                f"seed {seed} {name}: solve {solve_s:.1f} s, train {train_s:.1f} s, PSNR "
                + ", ".join(f"{r['setting']} {r['psnr']:.2f}" for r in ev["rows"]),
                flush=True,
            )
    payload.update(rows=rows, chi2=chi2, mismatch=mismatch, seconds=time.perf_counter() - t_all)
    save(args.tag, payload)
    write_report(args.tag, payload)
    print(f"total {payload['seconds']:.0f} s")


def write_report(tag: str, payload: dict) -> None:
    """Writes results/TAG.md (PSNR table, chi2 and condition mismatch) from the JSON payload."""
    rows, seeds = payload["rows"], payload["seeds"]
    settings = [r["setting"] for r in rows if r["method"] == "I-FM" and r["seed"] == seeds[0]]
    settings = [s for s in settings if s != "upsampled"]
    lines = [
        f"**digits 4x4 -> 8x8 super-resolution: PSNR (dB, higher is better; mean ± sd over seeds {seeds})**",
        "",
    ]
    lines += ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in payload["methods"]:
        cells = [_cell([r["psnr"] for r in rows if r["method"] == m and r["setting"] == s]) for s in settings]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    up = [r["psnr"] for r in rows if r["setting"] == "upsampled" and r["method"] == "I-FM"]
    lines += [f"| *upsampled condition* | {_cell(up)} |" + " |" * (len(settings) - 1), ""]
    lines += [
        "SD-FM potential chi2: " + "; ".join(f"{k}: {_cell(v)}" for k, v in payload["chi2"].items()),
        "",
    ]
    lines += [
        "Condition mismatch of the SD pairs, mean |z0 - z_j| / mean |z0 - z_random| (0 = own condition): "
        + "; ".join(f"{k}: {_cell(v)}" for k, v in payload["mismatch"].items()),
        "",
    ]
    (RESULTS / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
