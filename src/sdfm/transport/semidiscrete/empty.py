"""Cells that stay empty: one step that reaches them.

The per-cell step h_j += lr * s_j * (1 - m_j / b_j) moves an empty cell by lr * s_j per step, with s_j
a scale the cell has never measured (no sample fell in it or had it as runner-up). Where an atom lies
far beyond the rest (heavy tails: a 300-point Cauchy set reaches 1,000 times its median radius), the
rise its cell needs to win any noise is many thousands of such steps, and the solve ends with the atom
unpaired. On the hard problem the semi-dual is linear in h_j while the cell is empty, so the rise that
gives it a given share of a batch can be read off the batch itself: for each sample x, the cell wins x
once h_j rises by best(x) - score_j(x) (best over the other atoms), and the k-th smallest of these
rises wins it k samples.

:class:`EmptyCells` keeps, per atom, the training samples drawn when a sample last touched it (as
winner or, where the step's scan gives it, runner-up). An atom is stale when its weight times the
samples drawn since is at least ``PATIENCE`` = 32 (an atom at its weight would have been hit that many
times on average; a cell at its weight goes that long untouched with probability e^-32). At 8, the
cells of outliers that swing in and out of the noise rose thousands of times in a solve. A stale atom's
h rises to the k-th smallest rise over the batch, k = max(1, floor(b_j B / 2)): it wins about half its
weight of the batch, and the ordinary step takes over from there (a cell too full shrinks by its own
measured scale). Cells that are touched often enough never rise, so a solve whose cells all get noise
is unchanged bit for bit.
"""

from __future__ import annotations

import torch

from sdfm.transport.semidiscrete.problem import SemidiscreteProblem

#: an atom is stale after this many expected hits at its weight without a touch
PATIENCE = 32.0


class EmptyCells:
    """Which atoms no training sample has touched for ``PATIENCE`` expected hits, and their rise.

    Args:
        problem: the prepared problem (atoms, weights).
        samples: the training samples drawn so far (the hard phase starts counting here).
    """

    def __init__(self, problem: SemidiscreteProblem, samples: int):
        self.problem = problem
        self.last = torch.full((problem.n,), float(samples), dtype=torch.float64, device=problem.device)
        self.raised = 0  # rises made (an atom raised twice counts twice)

    def touch(self, index: torch.Tensor, second_index: torch.Tensor | None, samples: int) -> None:
        """Marks the batch's winners (and runner-ups, where known; -1 = none) as touched at ``samples``
        (the training samples drawn after this batch)."""
        self.last[index] = float(samples)
        if second_index is not None:
            self.last[second_index[second_index >= 0]] = float(samples)

    def stale(self, samples: int) -> torch.Tensor:
        """Indices of the atoms untouched for at least PATIENCE expected hits at their weight."""
        return torch.nonzero((samples - self.last) * self.problem.b >= PATIENCE).flatten()

    def rise(
        self, x: torch.Tensor, best: torch.Tensor, h: torch.Tensor, atoms: torch.Tensor, samples: int
    ) -> torch.Tensor:
        """The rise of h [len(atoms)] (float64) that lets each atom win about half its weight of the
        batch x [B, d], whose best scores at h are ``best`` [B] (the scorer's convention:
        <x, y_j - mean> + h_j - max h). The atoms must be untouched by this batch (not its winners or
        runner-ups), so every rise is positive. Marks the atoms as touched at ``samples``."""
        problem, batch = self.problem, x.shape[0]
        xs = x.to(torch.float64)
        top = best.to(torch.float64)[:, None]
        out = torch.empty(atoms.shape[0], dtype=torch.float64, device=h.device)
        shift, chunk = h.max(), problem.chunk(batch)
        for start in range(0, atoms.shape[0], chunk):
            part = atoms[start : start + chunk]
            keys = problem.atoms_at(part) - problem.mean
            gaps = (top - (xs @ keys.T + (h[part] - shift))).clamp_min_(0.0)  # [B, len]
            k = (problem.b[part] * batch / 2).floor().clamp(1, batch).long()
            out[start : start + part.shape[0]] = gaps.sort(dim=0).values.gather(0, (k - 1)[None]).squeeze(0)
        self.last[atoms] = float(samples)
        self.raised += int(atoms.shape[0])
        return out
