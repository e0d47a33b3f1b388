"""sdfm: flow matching with semidiscrete optimal-transport couplings (SD-FM) in PyTorch."""

__version__ = "0.1.0"

from sdfm.couplings.pairs import PairDataset, SemidiscretePairs  # noqa: E402
from sdfm.transport import SemidiscreteResult, SemidiscreteSolver, assign  # noqa: E402

__all__ = [
    "PairDataset",
    "SemidiscretePairs",
    "SemidiscreteResult",
    "SemidiscreteSolver",
    "__version__",
    "assign",
]
