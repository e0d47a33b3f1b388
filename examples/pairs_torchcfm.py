"""SD-FM pairs feeding torchcfm's ConditionalFlowMatcher (torchcfm is not an sdfm dependency:
`pip install torchcfm`, or `pip install --no-deps torchcfm` beside POT to keep a CPU torch).

torchcfm's OT-CFM solves OT inside each batch (ExactOptimalTransportConditionalFlowMatcher); with SD
pairs the plain ConditionalFlowMatcher (sigma = 0) is given pairs that are already globally optimal.

    python examples/pairs_torchcfm.py
"""

import torch
from torch import nn
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

from sdfm import SemidiscretePairs
from sdfm.data.toy import eight_gaussians


def main(steps: int = 2000, seed: int = 0) -> float:
    torch.manual_seed(seed)
    data = torch.from_numpy(eight_gaussians(4000, seed=seed))
    scale = data.std()
    y = data / scale  # the units the loop trains in
    pairs = SemidiscretePairs.fit(y, seed=seed)
    fm = ConditionalFlowMatcher(sigma=0.0)
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
        x0, x1 = pairs(256)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = (net(torch.cat([xt, t[:, None]], 1)) - ut).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # one Euler step
        x0 = torch.randn(2000, 2)
        x1 = (x0 + net(torch.cat([x0, torch.zeros(2000, 1)], 1))) * scale
    # distance of each one-step sample to the nearest of the eight centres (radius 4)
    angles = torch.arange(8) * (2 * torch.pi / 8)
    centres = 4 * torch.stack([angles.cos(), angles.sin()], 1)
    near = torch.cdist(x1, centres).min(1).values
    print(
        f"potential chi2 {pairs.chi2:.4f}; loss {loss.item():.3f}; median distance of one-step samples "
        f"to a centre: {near.median():.3f} (mode std 0.5)"
    )
    return float(near.median())


if __name__ == "__main__":
    main()
