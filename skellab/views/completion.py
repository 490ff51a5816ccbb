"""Edit a skeleton, press "complete", see several organs diffusion finishes from it (a notebook widget)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..autoencoder import Latent, SkeletalAutoencoder
from ..diffusion import LatentDiffusion
from ..errors import SkellabError
from ..generation import CONNECT_OVERLAP, connect_latents
from ..meshing import check_resolution, decode_mesh
from ..runtime import make_generator
from .k3d_views import PALETTE, _k3d
from .widgets import _ipywidgets

__all__ = ["CompletionWidget", "completion_widget", "selection_mask"]


def selection_mask(latent: Latent, center: int, radius: float) -> torch.Tensor:
    """(K,) bool: the tokens whose centres lie within ``radius`` of token ``center``'s (a "branch")."""
    c = latent.centers[0].detach().float().cpu()
    if not 0 <= int(center) < c.shape[0]:
        raise SkellabError(f"token index must be in [0, {c.shape[0]}), got {center}")
    return (c - c[int(center)]).norm(dim=-1) <= float(radius)


class CompletionWidget:
    """Select spheres, move or scale them, press "complete": ``num`` organs that keep the edited spheres
    (xyz, r and features) and let diffusion finish the rest (:meth:`LatentDiffusion.complete`).

    Parts: ``center`` (IntSlider: the selected sphere), ``radius`` (FloatSlider: spheres within it are
    selected), ``dx``/``dy``/``dz`` (move the selection), ``scale`` (its radii ×), ``complete``
    (Button), ``status`` (Label), ``plot`` (k3d: the original mesh, the spheres, the selection, and the
    completions side by side). State: ``edited`` (the edited :class:`Latent`), ``mask`` (K,),
    ``completions`` (Latent (num, K, D) of the last press), ``meshes``.
    """

    def __init__(self, diffusion: LatentDiffusion, autoencoder: SkeletalAutoencoder, latent: Latent, organ: str, *,
                 num: int = 3, steps: int = 12, resample: int = 2, resolution: int = 40, seed: int = 0,
                 height: int = 420) -> None:
        if not isinstance(latent, Latent) or latent.batch_size != 1:
            raise SkellabError("completion_widget needs one latent (batch size 1), e.g. a generated organ's")
        check_resolution(resolution)
        widgets, k3d = _ipywidgets(), _k3d()
        self.diffusion, self.autoencoder, self.latent = diffusion, autoencoder, latent.to("cpu")
        self.organ, self.num, self.steps, self.resample = organ, int(num), int(steps), int(resample)
        self.resolution, self.seed = int(resolution), int(seed)
        diffusion.class_id(organ)  # unknown organ: one-line error now, not at the first press
        K = latent.tokens.shape[1]
        self.center = widgets.IntSlider(value=0, min=0, max=K - 1, description="sphere")
        self.radius = widgets.FloatSlider(value=0.3, min=0.0, max=2.5, step=0.05, description="select ≤")
        self.dx, self.dy, self.dz = (widgets.FloatSlider(value=0.0, min=-0.5, max=0.5, step=0.02, description=d)
                                     for d in ("move x", "move y", "move z"))
        self.scale = widgets.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.05, description="radius ×")
        self.complete = widgets.Button(description=f"complete ({self.num} organs)")
        self.status = widgets.Label(value="")
        self.plot = k3d.plot(height=height, grid_visible=False, menu_visibility=False)
        v, f = decode_mesh(autoencoder, self.latent, self.resolution)
        self.plot += k3d.mesh(v.astype(np.float32), f.astype(np.uint32), color=PALETTE["mesh"], opacity=0.35,
                              name="original")
        c = self.latent.centers[0].numpy().astype(np.float32)
        self._all = k3d.points(c, point_size=0.03, color=PALETTE["spheres"], shader="flat", name="spheres")
        self._sel = k3d.points(c[:1], point_size=0.05, color=0xD62728, shader="flat", name="selected")
        self.plot += self._all
        self.plot += self._sel
        self._completed: list[Any] = []
        for w in (self.center, self.radius, self.dx, self.dy, self.dz, self.scale):
            w.observe(lambda _change: self._update(), names="value")
        self.complete.on_click(lambda _button: self.run())
        self.box = widgets.VBox([widgets.HBox([self.center, self.radius]), widgets.HBox([self.dx, self.dy, self.dz]),
                                 widgets.HBox([self.scale, self.complete]), self.status, self.plot])
        self.completions: Latent | None = None
        self.meshes: list[tuple[np.ndarray, np.ndarray]] = []
        self._update()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)

    def _update(self) -> None:
        self.mask = selection_mask(self.latent, self.center.value, self.radius.value)
        tokens = self.latent.tokens.clone()
        tokens[0, self.mask, :3] += torch.tensor([self.dx.value, self.dy.value, self.dz.value])
        tokens[0, self.mask, 3] *= float(self.scale.value)
        self.edited = Latent(tokens, self.latent.class_index)
        self._sel.positions = self.edited.centers[0][self.mask].numpy().astype(np.float32)
        self._all.positions = self.edited.centers[0].numpy().astype(np.float32)
        self.status.value = f"{int(self.mask.sum())} of {self.mask.numel()} spheres kept; press complete"

    def run(self) -> Latent:
        """Complete the edited latent ``num`` times, decode and show the organs to the right of the original."""
        k3d = _k3d()
        tokens = self.diffusion.complete(self.edited.tokens[0], self.mask, self.num, class_index=self.organ,
                                         steps=self.steps, resample=self.resample, generator=make_generator(self.seed))
        # stray islands joined onto the organ, as every generator does; the kept spheres never move
        self.completions, _ = connect_latents(Latent(tokens, torch.full((self.num,), self.diffusion.class_id(self.organ))),
                                              CONNECT_OVERLAP, anchored=self.mask)
        for obj in self._completed:
            self.plot -= obj
        self._completed, self.meshes, failed = [], [], 0
        for j in range(self.num):
            try:
                v, f = decode_mesh(self.autoencoder, self.completions[j], self.resolution)
            except SkellabError:
                failed += 1
                continue
            self.meshes.append((v, f))
            shift = np.array([2.3 * (len(self.meshes)), 0.0, 0.0], np.float32)
            mesh = k3d.mesh(v.astype(np.float32) + shift, f.astype(np.uint32), color=0x41B3A3, name=f"completion {j}")
            self.plot += mesh
            self._completed.append(mesh)
        self.status.value = (f"{len(self.meshes)} completions shown (kept {int(self.mask.sum())} spheres)"
                             + (f"; {failed} decoded to no surface" if failed else ""))
        return self.completions


def completion_widget(diffusion: LatentDiffusion, autoencoder: SkeletalAutoencoder, latent: Latent, organ: str,
                      **options: Any) -> CompletionWidget:
    """A :class:`CompletionWidget` for ``latent`` (batch 1) of class ``organ``; ``options``: ``num``, ``steps``,
    ``resample``, ``resolution``, ``seed``, ``height``."""
    return CompletionWidget(diffusion, autoencoder, latent, organ, **options)
