"""Where weights live and what they run on: devices, dtypes, the splatvlm cache, HF ids vs local
folders, the hub's reachability, and the one message for weights that cannot be found.

Every model loads through ``from_pretrained`` from an HF id or a local folder; the tiny demo models
(``demo.py``) are built from config, saved under the cache and then loaded through that same path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import torch

from .errors import SplatVLMError

# Environment that quiets the model libraries (progress bars, info logs, advisories); read when they are imported.
# Set by cli.quiet_libraries (unless --verbose) and by the tests' conftest.
QUIET_ENV = (
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ("TRANSFORMERS_VERBOSITY", "error"),
    ("DIFFUSERS_VERBOSITY", "error"),
    ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
)

DType = Literal["auto", "float32", "float16", "bfloat16"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SplatVLMError(f"device {device} asked for, but CUDA is not available; use --device cpu")
    return dev


def pick_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """bf16 on CUDA by default, fp32 on CPU (CPU half-precision kernels are slow or missing)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def device_name(device: torch.device) -> str:
    """What reports record as the device: the GPU's name, or the CPU's."""
    import platform

    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def cache_dir_path() -> Path:
    """``$SPLATVLM_CACHE`` or ``~/.cache/splatvlm`` (not created)."""
    root = os.environ.get("SPLATVLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "splatvlm"
    )
    return Path(root)


def cache_dir() -> Path:
    """Where splatvlm keeps generated demo models (``$SPLATVLM_CACHE`` or ``~/.cache/splatvlm``)."""
    path = cache_dir_path()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SplatVLMError(
            f"cannot create the cache folder {path} ({e.strerror}); set SPLATVLM_CACHE to a writable folder"
        ) from None
    return path


def is_local(source: str) -> bool:
    """True when ``source`` names something on disk rather than an HF hub id."""
    return source.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(source))


def missing_weights_error(source: str, what: str, flag: str, detail: str = "") -> SplatVLMError:
    """The one message for weights that cannot be found or read."""
    where = "local path" if is_local(source) else "HF id"
    tail = f" ({detail})" if detail else ""
    return SplatVLMError(
        f"cannot load {what} from {where} '{source}'{tail}; download it where you have network "
        f"(e.g. `hf download {source if not is_local(source) else '<id>'}`) and pass the "
        f"local folder with {flag} /path"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the HF hub instead of the hub client's retries, which take long offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@contextlib.contextmanager
def quiet_model_io():
    """Hide diffusers' and transformers' per-file progress bars while loading or saving (downloads keep theirs)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = (diffusers_logging, transformers_logging)
    was = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in zip(libs, was, strict=True):
            if on:
                lib.enable_progress_bar()


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__
