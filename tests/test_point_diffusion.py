"""The PVD-like point-cloud diffusion baseline."""

import pytest
import torch

from skellab.baselines import (
    PointDenoiser,
    PointDenoiserConfig,
    load_point_diffusion,
    sample_point_clouds,
    save_point_diffusion,
)
from skellab.diffusion import DDIMScheduler
from skellab.errors import SkellabError
from skellab.runtime import make_generator
from skellab.train import train_point_diffusion

AXES = torch.tensor([[0.8, 0.8, 0.8], [1.0, 0.5, 0.25]])  # class 0: sphere, class 1: flat ellipsoid


def _clouds(cls: int, n: int, points: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, points, 3, generator=gen)
    return z / z.norm(dim=-1, keepdim=True) * AXES[cls]


def test_point_denoiser_is_permutation_equivariant():
    torch.manual_seed(0)
    model = PointDenoiser(config=PointDenoiserConfig.tiny(num_classes=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x, t, c = torch.randn(2, 100, 3), torch.tensor([0.1, -0.5]), torch.tensor([0, 1])
        perm = torch.randperm(100)
        out = model(x, t, c)
        assert out.shape == (2, 100, 3)
        assert torch.allclose(out[:, perm], model(x[:, perm], t, c), atol=1e-5)


@pytest.fixture(scope="module")
def trained():
    gen = make_generator(0)
    clouds = torch.cat([_clouds(0, 12, 256, gen), _clouds(1, 12, 256, gen)])
    cls = torch.tensor([0] * 12 + [1] * 12)
    return train_point_diffusion(clouds, cls, scheduler="edm", steps=200, batch_size=8, lr=2e-3, warmup=20,
                                 ema_decay=None, classes=["sphere", "disc"], generator=make_generator(1),
                                 device="cpu", progress=False)


def test_training_learns_the_two_shapes(trained):
    model, history = trained
    loss = history["loss"]
    assert sum(loss[-40:]) / 40 < 0.97 * sum(loss[:20]) / 20
    extents = []
    for c in (0, 1):
        s = model.sample(3, class_index=c, steps=12, generator=make_generator(2))
        assert s.shape == (3, 256, 3) and torch.isfinite(s).all()
        extents.append(s.abs().quantile(0.95, dim=1).mean(0))  # (3,) per-axis extent
    assert extents[0][2] > 1.8 * extents[1][2]  # the sphere is much thicker in z than the disc
    assert extents[1][0] > 1.5 * extents[1][2]  # the disc is flat


def test_checkpoint_round_trip_and_ddim(trained, tmp_path):
    model = trained[0]
    path = save_point_diffusion(tmp_path / "pd.pt", model)
    back = load_point_diffusion(path)
    assert back.classes == ["sphere", "disc"] and back.num_points == 256
    a = model.sample(1, class_index=1, steps=3, generator=make_generator(0))
    b = back.sample(1, class_index=1, steps=3, generator=make_generator(0))
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(SkellabError):
        load_point_diffusion(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SkellabError):
        load_point_diffusion(tmp_path / "bad.pt")


def test_ddpm_baseline_runs_and_samples_with_ddim():
    clouds = _clouds(0, 4, 64, make_generator(0))
    model, history = train_point_diffusion(clouds, None, scheduler="ddpm", steps=3, batch_size=2, progress=False,
                                           device="cpu")
    ddim = DDIMScheduler(**{k: v for k, v in model.scheduler.config.items() if k not in ("name", "num_steps")})
    out = sample_point_clouds(model.denoiser, ddim, num=2, num_points=100, steps=4, generator=make_generator(0))
    assert out.shape == (2, 100, 3)
    with pytest.raises(SkellabError):
        train_point_diffusion(torch.zeros(4, 64, 2), None, steps=1, progress=False)
