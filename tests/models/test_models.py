"""Velocity networks: shapes (8x8, 28x28, 32x32 U-Net), labels, EMA, config errors."""

import pytest
import torch

from sdfm.models import MLPConfig, MLPVelocity, UNetConfig, build_model, make_ema


def test_mlp_shapes_and_labels():
    m = MLPVelocity(MLPConfig(dim=5, hidden=32, depth=2, num_classes=3))
    x, t = torch.randn(7, 5), torch.rand(7)
    out = m(x, t, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert out.shape == (7, 5)
    assert not torch.allclose(out, m(x, t, None))  # labels change the field
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(7, 4), t)
    with pytest.raises(ValueError, match="labels"):
        m(x, t, torch.full((7,), 5))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_unet_sizes(shape):
    m = build_model("unet", {"image_shape": shape, "base": 16})
    d = shape[0] * shape[1] * shape[2]
    out = m(torch.randn(2, d), torch.rand(2))
    assert out.shape == (2, d)
    loss = m(torch.randn(2, d), torch.rand(2)).pow(2).mean() + sum(p.sum() * 0 for p in m.parameters())
    loss.backward()


def test_unet_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_shape=(1, 6, 6), mults=(1, 2, 2))
    with pytest.raises(ValueError, match="model"):
        build_model("transformer", {})
    with pytest.raises(ValueError, match="config"):
        build_model("mlp", {"dim": 2, "width": 3})


def test_ema_tracks_the_average():
    m = torch.nn.Linear(2, 1, bias=False)
    ema = make_ema(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema.update_parameters(m)  # first update copies
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update_parameters(m)  # warm-up decay min(0.5, 2/11) = 2/11
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 9 / 11))
    for _ in range(20):
        ema.update_parameters(m)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update_parameters(m)  # now the full decay 0.5: halfway from 1 to 3
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 2.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="decay"):
        make_ema(m, decay=1.0)


def test_null_label_minus_one_is_the_no_label_token():
    from sdfm.models import LabelEmbedding

    emb = LabelEmbedding(5, 8)
    torch.testing.assert_close(emb(torch.tensor([-1, 2]), 2, "cpu")[0], emb(None, 1, "cpu")[0])
    with pytest.raises(ValueError, match="labels must lie"):
        emb(torch.tensor([-2]), 1, "cpu")


def test_checkpoints_with_the_old_embedding_names_still_load():
    from sdfm.models import build_model

    for name, config in (
        ("mlp", {"dim": 3, "num_classes": 2}),
        ("unet", {"image_shape": (1, 8, 8), "base": 8}),
    ):
        torch.manual_seed(0)
        model = build_model(name, config)
        old = {k.replace("embed.", "", 1): v.clone() for k, v in model.state_dict().items()}
        assert any(k.startswith("time.") for k in old)
        fresh = build_model(name, config)
        fresh.load_state_dict(old)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(fresh.state_dict()[k], v)
