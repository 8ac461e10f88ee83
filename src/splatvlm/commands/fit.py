"""`splatvlm fit`: render a reference splat from orbit views and fit a fresh scene to them (L1 + SSIM).

This exercises the whole spine (cameras, renderer, densification, trainer, .ply) with no diffusion
model, and reports PSNR on held-out views the fit never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import SplatVLMError
from ..gaussians.cameras import Cameras, orbit_cameras
from ..gaussians.render import render
from ..gaussians.scene import init_ball, num_gaussians
from ..guidance.photometric import PhotometricTerm, psnr
from ..run.runs import new_run_id
from ..run.train_state import new_state
from ..run.trainer import Term, train, write_run_files


@dataclass
class FitViews:
    """Training and held-out views around the reference."""

    train: Cameras
    heldout: Cameras


def fit_views(cfg: RunConfig, num_train: int, num_heldout: int, resolution: int) -> FitViews:
    """Training views on three elevation rings; held-out views between them in azimuth and elevation."""
    if num_train < 1 or num_heldout < 1:
        raise SplatVLMError("fit needs at least one training and one held-out view")
    cam = cfg.camera
    i = torch.arange(num_train, dtype=torch.float64)
    elevation = torch.tensor([0.0, 20.0, 40.0], dtype=torch.float64)[i.long() % 3]
    azimuth = i * 360.0 / num_train
    j = torch.arange(num_heldout, dtype=torch.float64)
    held_el = torch.full((num_heldout,), 10.0 + 20.0 * 0.5, dtype=torch.float64)
    held_az = (j + 0.5) * 360.0 / num_heldout + 7.0
    fovy = float(cam.eval_fovy)
    dist = cam.eval_distance / (
        torch.tan(torch.deg2rad(torch.tensor(fovy / 2))) if cam.relative_distance else 1.0
    )

    def ring(el: torch.Tensor, az: torch.Tensor) -> Cameras:
        n = len(el)
        cams = orbit_cameras(
            el, az, torch.full((n,), float(dist)), torch.full((n,), fovy), resolution, resolution
        )
        cams.ids = torch.arange(n)
        return cams

    return FitViews(train=ring(elevation, azimuth), heldout=ring(held_el, held_az))


@torch.no_grad()
def render_views(
    params: torch.nn.ParameterDict, cams: Cameras, cfg: RunConfig, chunk: int = 4
) -> torch.Tensor:
    """White-background renders [V, H, W, 3] in chunks of views."""
    dev = params["means"].device
    outs = []
    for s in range(0, len(cams), chunk):
        c = cams[s : s + chunk].to(dev)
        outs.append(
            render(params, c, cfg.render, torch.ones(len(c), 3, device=dev), depth=False).rgb.clamp(0, 1)
        )
    return torch.cat(outs)


def run_fit(
    reference: torch.nn.ParameterDict,
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    num_train: int,
    num_heldout: int,
    resolution: int,
    batch: int,
    progress: bool = True,
) -> tuple[torch.nn.ParameterDict, dict[str, float | int]]:
    """Fit a fresh scene to renders of ``reference``; return it and held-out metrics."""
    t0 = time.perf_counter()
    reference = reference.to(device)
    views = fit_views(cfg, num_train, num_heldout, resolution)
    targets = render_views(reference, views.train, cfg)
    held_targets = render_views(reference, views.heldout, cfg)
    info = {"id": new_run_id(), "command": "fit", "num_train": num_train, "num_heldout": num_heldout}
    write_run_files(run_dir, cfg, info)  # the id marks the folder as a run's (see runs.claim_run_folder)

    def sample(step: int, generator: torch.Generator) -> Cameras:
        idx = torch.randperm(num_train, generator=generator)[: min(batch, num_train)]
        return views.train[idx]

    params = init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)
    state = new_state(params, cfg, device)
    terms = {"photometric": Term(PhotometricTerm(targets), weights=("l1", "ssim"))}
    state = train(cfg, state, terms, run_dir, device, sample_views=sample, progress=progress)
    pred = render_views(state.params, views.heldout, cfg)
    metrics = {
        "heldout_psnr": psnr(pred, held_targets),
        "train_psnr": psnr(render_views(state.params, views.train, cfg), targets),
        "num_gaussians": num_gaussians(state.params),
        "seconds": time.perf_counter() - t0,
    }
    return state.params, metrics
