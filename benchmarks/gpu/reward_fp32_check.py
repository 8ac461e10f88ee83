"""Fast (graph-safe) reward path against the HF reference path in fp32 and bf16 on a random full-size VLM.

Separates precision drift from real discrepancies: in fp32 both paths must agree closely.
Usage: python benchmarks/gpu/reward_fp32_check.py [random-7b|random-3b]
"""

import sys

import torch
import torch.nn.functional as F

from splatvlm.guidance.reward import RewardConfig
from splatvlm.models import load_reward

model = sys.argv[1] if len(sys.argv) > 1 else "random-7b"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for dtype in ("float32", "bfloat16"):
    torch.manual_seed(0)
    r = load_reward(RewardConfig(model=model, size=252, dtype=dtype, cuda_graph=False), "cuda")
    r.set_prompt("a DSLR photo of a corgi wearing a party hat")
    x = torch.rand(4, 256, 256, 3, device="cuda", requires_grad=True)
    out = {}
    for name, fast in (("fast", True), ("reference", False)):
        s = r.score(x, fast=fast)
        (g,) = torch.autograd.grad(s["reward"], x)
        out[name] = (float(s["reward"]), float(s["logit_yes"]), float(s["logit_no"]), g.flatten().double())
    cos = float(F.cosine_similarity(out["fast"][3], out["reference"][3], dim=0))
    print(
        f"{model} {dtype}: reward fast {out['fast'][0]:.5f} reference {out['reference'][0]:.5f} "
        f"(|diff| {abs(out['fast'][0] - out['reference'][0]):.2e}); logits yes {out['fast'][1]:.4f}/{out['reference'][1]:.4f} "
        f"no {out['fast'][2]:.4f}/{out['reference'][2]:.4f}; pixel-gradient cosine {cos:.6f}"
    )
    del r
    torch.cuda.empty_cache()
