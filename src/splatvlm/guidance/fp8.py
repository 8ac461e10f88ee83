"""FP8 (e4m3) matmuls for the frozen reward VLM's linear layers: the forward and the input gradient.

The reward needs no weight gradients, so a frozen ``nn.Linear`` y = x W^T becomes two FP8 GEMMs:

    forward   y  = (q(x) s_x) (q(W) s_W)^T          q(.) in e4m3, one scale per row of x and of W
    backward  dx = (q(dy) s_dy) (q(W^T) s_W^T)^T     one scale per row of dy and per column of W

``torch._scaled_mm`` wants its second operand column-major, so each layer keeps W (for the forward) and W^T
(for the backward) in e4m3, each with its own row scales: 2 bytes a weight, as bf16 was. Activations and
output gradients are quantized on the fly, one scale per token, which inductor fuses into the neighbouring
ops when the blocks are compiled. Dimensions must be multiples of 16 (the LLM's are; the vision MLP's 3420
is not, which is one reason this stays on the language model).

At the LLM MLP's shapes an e4m3 GEMM runs nearly twice as fast as bf16 on Hopper, while the attention
projections' shapes gain nothing; hence ``fp8_mlp`` converts the MLPs only.

``forward=False`` keeps the forward in the model dtype from the unquantized weight and runs only the input
gradient in e4m3 (W in the model dtype plus W^T in e4m3: 3 bytes a weight). The forward's rounding is what
moves the pixel gradient: with e4m3 in the forward the pixel gradient drifts far from the unquantized model's,
with e4m3 in the backward only it stays close.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (q [M, K] e4m3, scale [M, 1] fp32) with x ~ q * scale; each row's amax maps to 448."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.clamp(amax, min=1e-12) / E4M3_MAX
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def fp8_matmul(q_a: Tensor, s_a: Tensor, q_b: Tensor, s_b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """(q_a s_a) (q_b s_b)^T for q_a [M, K], q_b [N, K] row-major e4m3 and row scales s_a [M, 1], s_b [N, 1]."""
    return torch._scaled_mm(q_a, q_b.t(), scale_a=s_a, scale_b=s_b.reshape(1, -1), out_dtype=out_dtype)


def fp8_input_grad(grad: Tensor, wt: Tensor, wt_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """dx = dy W for dy [M, N], from W^T [K, N] in e4m3 with its row scales [K, 1]; dy quantized per row."""
    q, s = quantize_rows(grad)
    return fp8_matmul(q, s, wt, wt_scale, out_dtype)


class _FrozenFp8Linear(torch.autograd.Function):
    """x [M, K] -> x W^T [M, N] with both GEMMs in e4m3; no gradient for the weights."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, w_scale: Tensor, wt: Tensor, wt_scale: Tensor) -> Tensor:
        ctx.save_for_backward(wt, wt_scale)
        ctx.out_dtype = x.dtype
        q, s = quantize_rows(x)
        return fp8_matmul(q, s, w, w_scale, x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        wt, wt_scale = ctx.saved_tensors
        return fp8_input_grad(grad, wt, wt_scale, ctx.out_dtype), None, None, None, None


class _Fp8GradLinear(torch.autograd.Function):
    """x [M, K] -> x W^T [M, N] in the model dtype from the unquantized W; the input gradient in e4m3."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, wt: Tensor, wt_scale: Tensor) -> Tensor:
        ctx.save_for_backward(wt, wt_scale)
        ctx.out_dtype = x.dtype
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        wt, wt_scale = ctx.saved_tensors
        return fp8_input_grad(grad, wt, wt_scale, ctx.out_dtype), None, None, None


class Fp8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` whose input gradient, and forward unless ``forward=False``, run as e4m3 GEMMs.

    forward=False keeps the weight in its dtype for the forward (exactly ``nn.Linear``'s) beside W^T in e4m3.
    """

    def __init__(self, linear: torch.nn.Linear, forward: bool = True):
        super().__init__()
        w = linear.weight.detach()
        if w.shape[0] % 16 or w.shape[1] % 16:
            raise ValueError(f"FP8 GEMMs need both dimensions divisible by 16, got {tuple(w.shape)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fp8_forward = forward
        if forward:
            q, s = quantize_rows(w)
            self.register_buffer("w", q)
            self.register_buffer("w_scale", s)
        else:
            self.register_buffer("weight", w)  # shares the linear's storage: no copy
        qt, st = quantize_rows(w.t())
        self.register_buffer("wt", qt.contiguous())
        self.register_buffer("wt_scale", st)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.fp8_forward:
            y = _FrozenFp8Linear.apply(x, self.w, self.w_scale, self.wt, self.wt_scale)
        else:
            y = _Fp8GradLinear.apply(x, self.weight, self.wt, self.wt_scale)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        where = "e4m3" if self.fp8_forward else "e4m3 input gradient only"
        return f"in_features={self.in_features}, out_features={self.out_features}, {where}"


def fp8_supported(device: torch.device) -> bool:
    """e4m3 GEMMs run on CPU and on CUDA from compute capability 8.9 (Ada, Hopper) on."""
    if device.type != "cuda":
        return device.type == "cpu"
    return torch.cuda.get_device_capability(device) >= (8, 9)


MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _swap_mlps(mlps, forward: bool, divisible_only: bool, names=MLP_PROJECTIONS) -> int:
    """Replace the plain ``nn.Linear`` projections ``names`` of ``mlps`` by ``Fp8Linear``; returns how many.

    divisible_only: skip a projection whose dimensions are not multiples of 16 (else Fp8Linear refuses it).
    """
    n = 0
    for mlp in mlps:
        for name in names:
            old = getattr(mlp, name, None)
            if type(old) is not torch.nn.Linear:
                continue
            if divisible_only and (old.in_features % 16 or old.out_features % 16):
                continue
            setattr(mlp, name, Fp8Linear(old, forward))
            n += 1
    return n


@torch.no_grad()
def fp8_mlp(language_model: torch.nn.Module, forward: bool = True, names=MLP_PROJECTIONS) -> int:
    """Swap the plain ``nn.Linear`` projections ``names`` of the decoder layers' MLPs for ``Fp8Linear``;
    returns how many.

    forward=False: e4m3 for the input gradient only (``Fp8Linear(..., forward=False)``).

    The last layer keeps bf16: the fast path runs its MLP on the answer rows alone, too few for FP8 to pay.
    LoRA-wrapped projections (peft) are not plain ``nn.Linear`` and stay as they are.
    """
    return _swap_mlps([layer.mlp for layer in language_model.layers[:-1]], forward, False, names)


@torch.no_grad()
def fp8_vision_mlp(visual: torch.nn.Module) -> int:
    """e4m3 for the input gradient of the vision blocks' MLP projections (forward unchanged); returns how many.

    The vision MLP is 3420 wide, so this needs ``pad_vision_mlp`` first (3456 = 216 x 16); blocks whose width
    is still not a multiple of 16 are left as they are.
    """
    return _swap_mlps([blk.mlp for blk in visual.blocks], forward=False, divisible_only=True)
