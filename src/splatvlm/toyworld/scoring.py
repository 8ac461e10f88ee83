"""Scoring a toy run's scene against its object's ground truth: masked PSNR and silhouette IoU on fixed held-out
cameras, the Janus score on back cameras, and the 4-side pictures the reports show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..gaussians.cameras import Cameras, eval_orbit, orbit_cameras
from ..gaussians.render import RenderConfig, render
from . import metrics
from .models import RESOLUTION, TORCH_CHUNK, toy_camera
from .world import ToyObject, janus_variant, object_params

HELD_OUT_ELEVATION = 20.0  # the training sampler never repeats a camera; these are fixed and evenly spaced
HELD_OUT_VIEWS = 8
BACK_AZIMUTHS = (160.0, 180.0, 200.0)


def held_out_cameras() -> Cameras:
    return eval_orbit(toy_camera(), HELD_OUT_VIEWS, RESOLUTION, elevation=HELD_OUT_ELEVATION)


def back_cameras() -> Cameras:
    cam = toy_camera()
    n = len(BACK_AZIMUTHS)
    fovy = torch.full((n,), cam.eval_fovy, dtype=torch.float64)
    dist = torch.full((n,), cam.eval_distance, dtype=torch.float64) / torch.tan(0.5 * torch.deg2rad(fovy))
    return orbit_cameras(torch.full((n,), cam.eval_elevation, dtype=torch.float64),
                         torch.tensor(BACK_AZIMUTHS, dtype=torch.float64), dist, fovy, RESOLUTION, RESOLUTION)  # fmt: skip


def side_cameras(resolution: int = RESOLUTION) -> Cameras:
    return eval_orbit(toy_camera(), 4, resolution)


@torch.no_grad()
def render_white(
    params: torch.nn.ParameterDict, cams: Cameras, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    params = params.to(device)
    out = render(
        params,
        cams,
        RenderConfig(torch_chunk=TORCH_CHUNK),
        torch.ones(len(cams), 3, device=device),
        depth=False,
    )
    return out.rgb.clamp(0, 1).cpu(), out.alpha.cpu()


def score(params: torch.nn.ParameterDict, obj: ToyObject, device: torch.device) -> dict[str, Any]:
    """psnr, iou (held-out cameras) and janus (back cameras; None without a front feature)."""
    gt = object_params(obj)
    cams = held_out_cameras()
    rgb, alpha = render_white(params, cams, device)
    gt_rgb, gt_alpha = render_white(gt, cams, device)
    out: dict[str, Any] = {
        "psnr": round(metrics.masked_psnr(rgb, alpha, gt_rgb, gt_alpha), 3),
        "iou": round(metrics.silhouette_iou(alpha, gt_alpha), 4),
        "janus": None,
    }
    if obj.front_back:
        back = back_cameras()
        r, _ = render_white(params, back, device)
        b, _ = render_white(gt, back, device)
        j, _ = render_white(object_params(janus_variant(obj)), back, device)
        out["janus"] = round(metrics.janus_score(r, b, j), 4)
    return out


def picture(rows: list[torch.nn.ParameterDict], path: Path, device: torch.device, scale: int = 3) -> None:
    """One PNG: a row per scene (ground truth first), 4 sides each, upscaled for viewing."""
    from ..outputs.export import save_png, to_uint8

    cams = side_cameras()
    images = []
    for p in rows:
        rgb, _ = render_white(p, cams, device)  # [4, H, W, 3]
        images.append(torch.cat(list(rgb), dim=1))  # [H, 4W, 3]
    sheet = torch.cat(images, dim=0)
    sheet = sheet.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    save_png(to_uint8(sheet[None])[0], path)
