"""Will it fit? Memory on this machine (or GPU) against what a run needs, checked before anything is built.

Only estimates: parameter counts of the full-size random architectures (or the weight files on disk),
times the bytes per value, plus a margin for activations. They exist to turn a minutes-long run into an
allocation traceback into a one-line refusal, not to predict peaks.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import SplatVLMError

GB = 2**30
# Parameter counts of the full-size architectures that `--*.model random*` builds (the published configs' shapes).
RANDOM_PARAMS = {
    "random-7b": 8.29e9,  # Qwen2.5-VL-7B: language model 7.6e9 + vision tower 0.67e9
    "random-3b": 3.75e9,  # Qwen2.5-VL-3B
    "random-sds": 1.30e9,  # SD-2.1-base UNet 0.87e9 + VAE 0.08e9 + OpenCLIP-H text encoder 0.34e9
}
ACTIVATION_MARGIN = 1.3  # activations, gradients to the pixels, allocator slack
GAUSSIAN_BYTES = 59 * 4 * 6  # 59 floats per Gaussian: value, grad, two Adam moments, densify stats, render


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM, from /proc/meminfo, else sysconf; (0, 0) when unknown."""
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
        total = fields["MemTotal"]
        return fields.get("MemAvailable", fields.get("MemFree", total)), total
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes on ``device``: the GPU's own memory, or the host's for CPU."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    return host_memory()


def _dtype_bytes(dtype: str, device: torch.device) -> int:
    if dtype == "auto":
        return 2 if device.type == "cuda" else 4
    return 4 if dtype in ("float32", "fp32") else 2


def _weights_on_disk(source: str) -> int:
    path = Path(os.path.expanduser(source))
    if not path.is_dir():
        return 0
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")
    )


def model_estimate(kind: str, cfg, device: torch.device) -> int:
    """Estimated bytes of the model of ``kind`` (``guidance.terms.ModelKind``) that run config ``cfg`` loads."""
    if kind == "reward":
        model = cfg.vlm.model
        n = RANDOM_PARAMS.get(model, 0) * _dtype_bytes(cfg.vlm.dtype, device)
        n = n or _weights_on_disk(model) * _dtype_bytes(cfg.vlm.dtype, device) / 2  # files hold bf16
    elif kind == "prior":
        model = cfg.sds.model
        n = RANDOM_PARAMS["random-sds"] * _dtype_bytes(cfg.sds.dtype, device) if model == "random" else 0
        n = n or _weights_on_disk(model) * _dtype_bytes(cfg.sds.dtype, device) / 2
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return int(n * ACTIVATION_MARGIN)


def model_bytes(cfg, vlm_device: torch.device, sds_device: torch.device) -> dict[torch.device, int]:
    """Estimated bytes the guidance models of run config ``cfg`` need, per device (``vlm_device``: the
    own-device terms', the reward's)."""
    from .guidance.terms import TERMS
    from .run.schedules import terms_active

    need: dict[torch.device, int] = {}
    active = terms_active(cfg)
    counted: set[str] = set()
    for spec in TERMS:
        if spec.model is None or not active[spec.name] or spec.model in counted:
            continue
        counted.add(spec.model)
        device = vlm_device if spec.own_device else sds_device
        need[device] = need.get(device, 0) + model_estimate(spec.model, cfg, device)
    return need


def check_models_fit(cfg, device: torch.device, vlm_device: torch.device | None = None) -> None:
    """Refuse, in one line with the estimate and what is free, a run whose models cannot fit."""
    vlm_device = vlm_device or device
    for dev, need in model_bytes(cfg, vlm_device, device).items():
        free, total = device_memory(dev)
        if total and need > free:
            where = "GPU" if dev.type == "cuda" else "RAM"
            hint = (
                "use a GPU with more memory, the 3B reward (--preset vlm3d-3b), or --placement split"
                if dev.type == "cuda"
                else "run it on a GPU (bf16 halves it), or use the 3B reward (--preset vlm3d-3b)"
            )
            raise SplatVLMError(
                f"the models need about {need / GB:.1f} GB of {where} on {dev} (estimate), but only "
                f"{free / GB:.1f} GB of {total / GB:.1f} GB is available; {hint}"
            )


def check_scene_fits(num_points: int) -> None:
    """A scene larger than this machine's whole memory is refused before it is allocated."""
    _, total = host_memory()
    need = num_points * GAUSSIAN_BYTES
    if total and need > total:
        raise SplatVLMError(
            f"--scene.num-points {num_points:,} needs about {need / GB:.1f} GB, more than this machine's "
            f"{total / GB:.1f} GB of memory"
        )
