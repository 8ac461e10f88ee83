"""The reward's differentiable preprocessing against the HF image processor (CPU)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splatvlm.guidance.vlm_views import preprocess_views, resize_views


@pytest.mark.parametrize("hw", [(56, 56), (28, 84), (112, 56), (84, 140), (252, 252)])
def test_preprocess_matches_hf_processor(hw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    h, w = hw
    imgs = np.random.default_rng(h * 1000 + w).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    ours, grid = preprocess_views(torch.from_numpy(imgs).float() / 255)
    proc = Qwen2VLImageProcessorPil()
    # Without its resize, and (where its min/max pixel bounds allow) with it: it keeps multiples of 28.
    for do_resize in (False, True) if h * w >= 56 * 56 else (False,):
        ref = proc(images=list(imgs), do_resize=do_resize, return_tensors="pt")
        assert ref["image_grid_thw"].tolist() == grid.tolist() == [[1, h // 14, w // 14]] * 3
        assert ref["pixel_values"].shape == ours.shape == (3 * (h // 14) * (w // 14), 3 * 2 * 14 * 14)
        torch.testing.assert_close(ours, ref["pixel_values"], rtol=0, atol=1e-5)


def test_preprocess_resize_is_differentiable_bicubic():
    x = torch.rand(2, 64, 80, 3, requires_grad=True)
    pv, grid = preprocess_views(x, size=252)
    assert grid.tolist() == [[1, 18, 18]] * 2 and pv.shape == (2 * 18 * 18, 1176)
    expected = F.interpolate(x.permute(0, 3, 1, 2), size=(252, 252), mode="bicubic", antialias=True)
    expected = expected.clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(resize_views(x, 252), expected)
    pv.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of 28"):
        preprocess_views(torch.rand(1, 50, 56, 3))
