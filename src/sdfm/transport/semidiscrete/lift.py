"""The lifted warm start: the problem solved on k-means clusters of the atoms, then lifted to every
atom with each coarse cell's Gaussian approximation (a two-level start).

The atoms are grouped into K clusters (k-means, :func:`lift_clusters`); the coarse problem, each
cluster's weighted barycentre c_k carrying the cluster's mass w_k, is solved by the solver itself to
chi2 ``COARSE_TOL`` (K atoms: about a second). In the coarse Laguerre cell of c_k the noise has mean
xbar_k and covariance Sigma_k; the cluster's atoms have covariance S_k. The optimal map between the
Gaussians N(xbar_k, Sigma_k) and N(c_k, S_k) is x -> c_k + A_k (x - xbar_k), the gradient of a quadratic
Brenier potential, and its convex conjugate gives each atom j of cluster k the dual potential

    psi_j = psi_k + <xbar_k, y_j - c_k> + 1/2 (y_j - c_k)^T A_k^{-1} (y_j - c_k),    h_j = -psi_j,

with psi_k the coarse solution in the same dot-product form and
A_k^{-1} = Sigma^{1/2} (Sigma^{1/2} S Sigma^{1/2})^{-1/2} Sigma^{1/2}. The constant term alone (each
member given its cluster's potential) leaves the whole coarse cell to the cluster's outermost atoms:
the score <x, y_j> + h_j of a fixed x is then linear in y_j and peaks on the cluster's hull. The linear
term centres the split on the cell's own noise, the quadratic one gives the inner atoms their share.

S_k is used on its top ``LIFT_RANK`` principal directions U_k (all of them when the cluster spans
fewer), where the map needs only the block U_k^T Sigma_k U_k of the noise covariance; what the atoms
have outside that span is penalised as an isotropic Gaussian pair would be (variance s_res against the
noise's sigma_res^2 per direction: sigma_res / sqrt(s_res) |residual|^2). xbar_k and the blocks are
measured on :func:`lift_draws` noise draws scored against the K centres only, each K / N of a full
sample's work; a cell with too few draws for its block takes an isotropic one.

On the 64-d mixture of 16 rank-16 Gaussians (N = 30,000) this start on 256 clusters has chi2 0.73
where h = 0 has 467 and the constant lift 14.6; from it the averaged stochastic ascent reaches chi2
0.1 after about 12 samples per target instead of 14 (BENCHMARKS.md, section 34). With 1,024 clusters
its chi2 after 13-15 samples per target is 4-6% lower again (section 36). The method is the
semidiscrete problem of arXiv 2509.25519; the two-level start is this library's.
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch

from sdfm.transport.clustering import kmeans
from sdfm.transport.sources import draw

#: k-means clusters of the coarse problem: n / LIFT_ATOMS_PER_CLUSTER, at least LIFT_CLUSTERS and at
#: most LIFT_CLUSTERS_MAX (:func:`lift_clusters`), and at most n / LIFT_MIN_ATOMS
LIFT_CLUSTERS = 256
LIFT_CLUSTERS_MAX = 1024
LIFT_ATOMS_PER_CLUSTER = 100
LIFT_MIN_ATOMS = 8
#: noise draws per cluster that measure the coarse cells' means and covariance blocks, up to
#: LIFT_CLUSTERS clusters; more clusters share LIFT_DRAWS * LIFT_CLUSTERS draws
LIFT_DRAWS = 1024
#: the cluster's principal directions that get their own Gaussian map (the rest: isotropic)
LIFT_RANK = 32
#: the coarse problem is solved to this chi2
COARSE_TOL = 0.02
#: draws a cell needs, beyond twice its rank, to estimate its own covariance block
MIN_CELL_DRAWS = 8
DRAW_BATCH = 8192
#: a cluster's atoms are read this many coordinates at a time (memory bounded whatever its size)
ROW_BLOCK = 1 << 22


def lift_clusters(n: int) -> int:
    """The lift's k-means clusters for n atoms: n / LIFT_ATOMS_PER_CLUSTER within [LIFT_CLUSTERS,
    LIFT_CLUSTERS_MAX]. More clusters approximate the optimal map by more Gaussian pieces, and the
    start's error decays slowly in the averaged ascent: from K = 1,024 rather than 256 the averaged
    potential's chi2 is 4-6% lower after 13-15 samples per target at N = 30,000-100,000 (BENCHMARKS.md
    section 36). The lift's cost grows with K (k-means, the coarse solve of K atoms), so K grows with
    n, whose solves take longer."""
    return min(LIFT_CLUSTERS_MAX, max(LIFT_CLUSTERS, int(n) // LIFT_ATOMS_PER_CLUSTER))


def lift_draws(clusters: int) -> int:
    """The noise draws that measure K coarse cells: LIFT_DRAWS per cell up to LIFT_CLUSTERS cells,
    LIFT_DRAWS * LIFT_CLUSTERS shared beyond: 256 per cell at K = 1,024 (in a scratch run of
    BENCHMARKS.md section 36 the averaged potential's chi2 after 10-15 samples per target was the same
    as with 1,024 per cell), while K * LIFT_DRAWS draws would cost K^2 LIFT_DRAWS d to score."""
    return LIFT_DRAWS * min(int(clusters), LIFT_CLUSTERS)


def lifted_start(problem, clusters: int | None = None) -> tuple[torch.Tensor, dict]:
    """(the iterate h [n] of the lifted start, a summary for ``settings["lift"]``) of a problem, on
    ``clusters`` k-means clusters (None: :func:`lift_clusters`).

    Randomness (k-means, the coarse solve, the draws) comes from ``problem.generator``; the draws
    are not counted in ``problem.samples`` (they score K centres, not the atoms: see the summary)."""
    t0 = time.perf_counter()
    clusters = lift_clusters(problem.n) if clusters is None else clusters
    k = max(1, min(int(clusters), problem.n // LIFT_MIN_ATOMS))
    seed = int(torch.randint(0, 2**62, (1,), generator=problem.generator, device=problem.device))
    labels, mass, centres = _clusters(problem, k, torch.Generator().manual_seed(seed))
    psi, coarse = _coarse_potential(problem, centres, mass)
    order = torch.argsort(labels, stable=True)
    bounds = [0, *torch.bincount(labels, minlength=centres.shape[0]).cumsum(0).tolist()]
    members = [order[bounds[i] : bounds[i + 1]] for i in range(centres.shape[0])]
    spans = [_span(problem, rows, centres[i], mass[i]) for i, rows in enumerate(members)]
    draws = lift_draws(centres.shape[0])
    xbar, blocks = _cell_noise(problem, centres, psi, spans, draws)
    h = torch.empty(problem.n, dtype=torch.float64, device=problem.device)
    for i, rows in enumerate(members):
        if rows.numel():
            h[rows] = -_member_potential(problem, rows, centres[i], psi[i], xbar[i], spans[i], blocks[i])
    h = h - (problem.b * h).sum()
    summary = {
        "clusters": int(centres.shape[0]),
        "draws": draws,
        "coarse_samples": coarse.samples,
        "coarse_chi2": coarse.chi2,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return h, summary


def _clusters(problem, k: int, gen: torch.Generator):
    """(labels [n], masses [K], weighted barycentres [K, d] in centred coordinates) of k-means
    clusters of the atoms; clusters left empty are dropped."""
    chunk = problem.chunk(problem.d)
    found = kmeans(partial(problem.atom_chunks, chunk), problem.n, k, generator=gen, device=problem.device)
    labels = found.labels.to(problem.device)
    mass = torch.zeros(k, dtype=torch.float64, device=problem.device).index_add_(0, labels, problem.b)
    alive = mass > 0
    relabel = torch.cumsum(alive.long(), 0) - 1
    labels, mass = relabel[labels], mass[alive]
    sums = torch.zeros(mass.shape[0], problem.d, dtype=torch.float64, device=problem.device)
    for start, stop, y in problem.atom_chunks(chunk):
        sums.index_add_(0, labels[start:stop], (y - problem.mean) * problem.b[start:stop, None])
    return labels, mass, sums / mass[:, None]


def _coarse_potential(problem, centres: torch.Tensor, mass: torch.Tensor):
    """(psi [K] of the coarse problem in the dot-product form, its solver result). The solver is the
    class of the problem's own settings (the solver module imports this one, not the reverse)."""
    solver = type(problem.settings)(
        tol=COARSE_TOL, max_steps=20_000, dtype="float64", device=str(problem.device), pruning="off"
    )
    noise = None if problem.gaussian else problem.noise
    result = solver.solve(centres, mass, generator=problem.generator, noise=noise)
    g = result.potential.to(device=problem.device, dtype=torch.float64)
    return 0.5 * centres.square().sum(1) - g, result


def _span(problem, rows: torch.Tensor, centre: torch.Tensor, mass: torch.Tensor):
    """(U [d, r], the atoms' variances along U [r], their variance per direction outside U) of one
    cluster: the top principal directions of its weighted covariance."""
    d = problem.d
    if rows.numel() < 2:
        empty = torch.zeros(d, 0, dtype=torch.float64, device=problem.device)
        return empty, empty.new_zeros(0), 0.0
    if rows.numel() < d:  # the smaller Gram matrix: its eigenvectors map to the covariance's
        weighted = _weighted_deviations(problem, rows, centre, mass)
        vals, vecs = torch.linalg.eigh(weighted @ weighted.T)
        vecs = weighted.T @ vecs / vals.clamp_min(1e-300).sqrt()
    else:  # (a large cluster is read ROW_BLOCK elements at a time)
        cov = torch.zeros(d, d, dtype=torch.float64, device=problem.device)
        for part in rows.split(max(1, ROW_BLOCK // d)):
            weighted = _weighted_deviations(problem, part, centre, mass)
            cov += weighted.T @ weighted
        vals, vecs = torch.linalg.eigh(cov)
    total = float(vals.clamp_min(0).sum())
    keep = min(LIFT_RANK, int((vals > 1e-10 * max(float(vals.max()), 1e-300)).sum()))
    top = torch.flip(torch.arange(vals.shape[0], device=vals.device), (0,))[:keep]
    variances, basis = vals[top].clamp_min(0), vecs[:, top]
    rest = (total - float(variances.sum())) / (d - keep) if d > keep else 0.0
    return basis, variances, max(rest, 0.0)


def _weighted_deviations(problem, rows, centre, mass) -> torch.Tensor:
    """(y_j - c) sqrt(b_j / w) [len, d] of the atoms at ``rows`` (centred coordinates)."""
    dev = problem.atoms_at(rows) - problem.mean - centre
    return dev * (problem.b[rows] / mass).sqrt()[:, None]


def _cell_noise(problem, centres, psi, spans, draws: int):
    """(xbar [K, d], per cell (U^T Sigma U [r, r], sigma_res^2 per direction outside U)) of the noise
    in each coarse cell, from ``draws`` samples scored against the centres."""
    k, d, device = centres.shape[0], problem.d, problem.device
    count = torch.zeros(k, dtype=torch.float64, device=device)
    first = torch.zeros(k, d, dtype=torch.float64, device=device)
    second = [torch.zeros(u.shape[1], u.shape[1], dtype=torch.float64, device=device) for u, _, _ in spans]
    square = torch.zeros(k, dtype=torch.float64, device=device)
    for lo in range(0, draws, DRAW_BATCH):
        x = draw(
            problem.noise,
            min(DRAW_BATCH, draws - lo),
            d,
            generator=problem.generator,
            device=device,
            dtype=torch.float64,
        )
        cell = (x @ centres.T - psi).argmax(1)
        count.index_add_(0, cell, torch.ones_like(cell, dtype=torch.float64))
        first.index_add_(0, cell, x)
        square.index_add_(0, cell, x.square().sum(1))
        order = torch.argsort(cell, stable=True)
        sizes = torch.bincount(cell, minlength=k).tolist()
        for i, part in enumerate(torch.split(x[order], sizes)):
            if sizes[i] and spans[i][0].shape[1]:
                proj = part @ spans[i][0]
                second[i] += proj.T @ proj
    return _cell_moments(count, first, second, square, spans, d)


def _cell_moments(count, first, second, square, spans, d: int):
    """Means and covariance blocks from the cells' sums; isotropic blocks where draws are few."""
    seen = count.clamp_min(1)
    xbar = first / seen[:, None]
    spread = (square / seen - xbar.square().sum(1)) / d  # variance per direction
    fallback = (
        float(spread[count >= MIN_CELL_DRAWS].median()) if bool((count >= MIN_CELL_DRAWS).any()) else 1.0
    )
    blocks = []
    for i, (basis, _, _) in enumerate(spans):
        r = basis.shape[1]
        if count[i] < MIN_CELL_DRAWS:
            blocks.append((fallback * torch.eye(r, dtype=torch.float64, device=xbar.device), fallback))
            continue
        mean = basis.T @ xbar[i]
        block = second[i] / count[i] - torch.outer(mean, mean)
        if count[i] < 2 * r + MIN_CELL_DRAWS:
            block = float(spread[i]) * torch.eye(r, dtype=torch.float64, device=xbar.device)
        trace = float(spread[i]) * d - float(block.trace())
        rest = trace / (d - r) if d > r else 0.0
        blocks.append((block, max(rest, 1e-12 * max(float(spread[i]), 1e-300))))
    return xbar, blocks


def _member_potential(problem, rows, centre, psi_k, xbar_k, span, block) -> torch.Tensor:
    """psi_j of a cluster's members: coarse potential, the cell's linear term, the Gaussian map's
    quadratic term in the span and the isotropic one outside it (see the module docstring)."""
    basis, variances, rest_atoms = span
    sigma, rest_noise = block
    inverse_map = None
    if basis.shape[1]:
        eye = torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
        root = _psd_power(sigma + 1e-12 * float(sigma.trace()) * eye, 0.5)
        inverse_map = root @ _psd_power(root @ torch.diag(variances) @ root, -0.5) @ root
    out = []
    for part in rows.split(max(1, ROW_BLOCK // problem.d)):  # (a large cluster: in blocks)
        dev = problem.atoms_at(part) - problem.mean - centre
        psi = psi_k + dev @ xbar_k
        if inverse_map is not None:
            coords = dev @ basis
            psi = psi + 0.5 * ((coords @ inverse_map) * coords).sum(1)
            residual = (dev.square().sum(1) - coords.square().sum(1)).clamp_min(0)
            if rest_atoms > 0:
                psi = psi + 0.5 * residual * math.sqrt(rest_noise) / math.sqrt(rest_atoms)
        out.append(psi)
    return torch.cat(out)


def _psd_power(a: torch.Tensor, p: float) -> torch.Tensor:
    """a^p of a symmetric positive semi-definite matrix (eigenvalues below 1e-12 of the largest: 0)."""
    vals, vecs = torch.linalg.eigh(0.5 * (a + a.T))
    keep = vals > 1e-12 * max(float(vals.max()), 1e-300)
    powered = torch.where(keep, vals.clamp_min(1e-300) ** p, torch.zeros_like(vals))
    return (vecs * powered) @ vecs.T
