"""Progress bars for long library calls.

The transport layer reports through callbacks and draws nothing; this module turns a solver's
callback into a tqdm bar that says what decides the stop (the measured chi2 against tol), not a step
count against ``max_steps``::

    with solve_bar(tol=solver.tol, num_targets=len(y)) as bar:
        result = solver.solve(y, callback=bar)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator


class SolveBar:
    """A tqdm bar for :meth:`~sdfm.transport.SemidiscreteSolver.solve` (pass it as ``callback``).

    It shows the phase (entropic annealing, then the hard problem), noise samples drawn per target,
    the last chi2 measured on fresh noise against the tolerance that stops the solve, and the worst
    smooth-group mass error in floors of its sampling noise (the other condition of the stop; "holds
    the stop" when chi2 passed and it did not).
    """

    def __init__(self, *, tol: float | None, num_targets: int, desc: str = "solve", disable: bool = False):
        from tqdm.auto import tqdm

        self.tol = tol
        self.num_targets = max(1, int(num_targets))
        self.bar = tqdm(total=None, desc=desc, unit="step", dynamic_ncols=True, disable=disable, leave=False)
        self._last_step = 0

    def __call__(self, state) -> None:
        self.bar.update(state.step - self._last_step)
        self._last_step = state.step
        if state.step % 10 and not (state.measured is not None and state.measured.step == state.step):
            return
        post = {"phase": "anneal" if state.annealing else "hard"}
        post["samples/target"] = f"{state.train_samples / self.num_targets:.1f}"
        if state.measured is not None:
            tol = "" if self.tol is None else f" (tol {self.tol:g})"
            post["chi2"] = f"{state.measured.chi2:.4f}±{state.measured.stderr:.4f}{tol}"
            if state.measured.smooth_ratio is not None:  # the stop's other half: smooth-group errors
                held = " (holds the stop)" if state.measured.smooth_held else ""
                post["smooth error"] = f"{state.measured.smooth_ratio:.1f} floors{held}"
        elif not math.isnan(state.chi2_iterate):
            post["chi2 of batches"] = f"{state.chi2_iterate:.3g}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def solve_bar(
    *, tol: float | None, num_targets: int, desc: str = "solve", disable: bool = False
) -> Iterator[SolveBar]:
    """A :class:`SolveBar`, closed on exit."""
    bar = SolveBar(tol=tol, num_targets=num_targets, desc=desc, disable=disable)
    try:
        yield bar
    finally:
        bar.close()
