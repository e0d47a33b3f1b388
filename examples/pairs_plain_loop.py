"""SD-FM pairs feeding a plain PyTorch flow-matching loop (no sdfm training code).

python examples/pairs_plain_loop.py            # ~20 s on 2 CPU cores
"""

import torch
from torch import nn

from sdfm import SemidiscretePairs
from sdfm.data.toy import checkerboard


def main(steps: int = 2000, seed: int = 0) -> float:
    torch.manual_seed(seed)
    data = torch.from_numpy(checkerboard(4000, seed=seed))  # your data [N, d]
    scale = data.std()
    y = data / scale  # the units the loop trains in (pairs come in the units of y)
    pairs = SemidiscretePairs.fit(y, seed=seed)  # the potential: solved once (chi2 <= 0.05)

    # --- a plain flow-matching loop: only the pairing comes from sdfm ---
    width = 128
    net = nn.Sequential(
        nn.Linear(3, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, 2),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x0, x1 = pairs(256)  # noise and its optimal data point
        t = torch.rand(256, 1)
        xt = (1 - t) * x0 + t * x1
        loss = (net(torch.cat([xt, t], 1)) - (x1 - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    # one Euler step from fresh noise: SD-FM paths are nearly straight
    with torch.no_grad():
        x0 = torch.randn(2000, 2)
        x1 = (x0 + net(torch.cat([x0, torch.zeros(2000, 1)], 1))) * scale  # back to data units
    squares = torch.floor(x1 / 2)
    inside = (x1.abs() <= 4).all(1) & (squares[:, 0] + squares[:, 1]).remainder(2).eq(0)
    print(
        f"potential chi2 {pairs.chi2:.4f}; loss {loss.item():.3f}; one-step samples on the board: "
        f"{inside.float().mean():.1%}"
    )
    return float(inside.float().mean())


if __name__ == "__main__":
    main()
