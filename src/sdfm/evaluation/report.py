"""The Markdown report of an evaluation: metric tables (methods x settings) and pictures."""

from __future__ import annotations

import json
from pathlib import Path

from sdfm.artifacts.atomic import atomic_write
from sdfm.evaluation.plots import plot_metric_curves, plot_sample_grid, plot_trajectories
from sdfm.evaluation.results import METRICS, EvalResult

FILES = ("metrics.json", "report.md", "samples.png", "metrics_vs_nfe.png", "trajectories.png")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def metric_tables(results: dict[str, EvalResult]) -> list[str]:
    """One Markdown table per metric: rows = methods, columns = settings (dopri5 with its NFE); the
    best method per column in bold; then the path statistics."""
    lines = []
    settings = list(
        dict.fromkeys(r["setting"] for res in results.values() for r in res.rows if r["setting"] != "data")
    )
    floor = next((r for res in results.values() for r in res.rows if r["setting"] == "data"), None)
    for key, (label, lower) in METRICS.items():
        if not any(key in r for res in results.values() for r in res.rows):
            continue
        heads = [s if s != "dopri5" else "dopri5 (NFE)" for s in settings]
        ref = (
            f"; real training data against the reference: {_fmt(floor[key])}"
            if floor and key in floor
            else ""
        )
        lines += [f"**{label}** ({'lower' if lower else 'higher'} is better{ref})", ""]
        lines.append("| method | " + " | ".join(heads) + " |")
        lines.append("|---|" + "---|" * len(settings))
        best = {}
        for s in settings:
            vals = [r[key] for res in results.values() for r in res.rows if r["setting"] == s and key in r]
            if len(vals) > 1:
                best[s] = min(vals) if lower else max(vals)
        for m, res in results.items():
            by = {r["setting"]: r for r in res.rows}
            cells = []
            for s in settings:
                v = by.get(s, {}).get(key)
                cell = _fmt(v)
                cell = f"**{cell}**" if v is not None and best.get(s) == v else cell
                if s == "dopri5" and v is not None:
                    cell += f" ({by[s]['nfe']})"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**Flow paths** (rk4, 32 steps): curvature E_t|v(t, x_t) - (x1 - x0)|^2 (0 = straight) "
        "and transport cost E|x1 - x0|^2",
        "",
    ]
    lines += ["| method | curvature | transport cost |", "|---|---|---|"]
    for m, res in results.items():
        lines.append(f"| {m} | {_fmt(res.path['curvature'])} | {_fmt(res.path['transport_cost'])} |")
    lines.append("")
    return lines


def write_report(
    out_dir: str | Path,
    results: dict[str, EvalResult],
    *,
    title: str,
    image_shape=None,
    display=None,
    notes: list[str] = (),
    extra: list[str] = (),
    payload: dict | None = None,
) -> Path:
    """Writes ``metrics.json``, the pictures and ``report.md`` into ``out_dir``; returns the report.
    ``display`` maps normalised samples back to data units for image grids."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"results": {m: r.to_json() for m, r in results.items()}, **(payload or {})}
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(data, indent=2)))
    first = next(iter(results.values()))
    plot_sample_grid(
        {m: r.samples for m, r in results.items()},
        out / "samples.png",
        reference=first.reference,
        image_shape=image_shape,
        display=display,
    )
    plot_metric_curves(
        {m: r.rows for m, r in results.items()},
        out / "metrics_vs_nfe.png",
        metrics={k: v for k, v in METRICS.items() if k in ("w2", "energy", "fd_classifier", "accuracy")},
    )
    plot_trajectories(
        {m: r.trajectory for m, r in results.items()}, out / "trajectories.png", reference=first.reference
    )
    lines = [f"# {title}", ""]
    lines += [*notes, ""]
    lines += ["## Metrics", ""] + metric_tables(results)
    lines += [
        "## Pictures",
        "",
        "Metrics against the number of network evaluations:",
        "",
        "![metrics vs NFE](metrics_vs_nfe.png)",
        "",
        "Samples per method (rows) and sampler setting (columns), same noise everywhere:",
        "",
        "![samples](samples.png)",
        "",
        "ODE paths from noise (black) to samples (straight paths need few steps):",
        "",
        "![trajectories](trajectories.png)",
        "",
    ]
    lines += list(extra)
    return atomic_write(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
