import pytest
import torch

from splatvlm.guidance.graphs import GraphedGrad, surrogate_loss


def test_surrogate_value_and_gradient():
    x = torch.randn(2, 3, requires_grad=True)
    value, grad = torch.tensor(1.25), torch.randn(2, 3)
    loss = surrogate_loss(x, value, grad)
    assert loss.item() == pytest.approx(1.25)
    loss.backward()
    torch.testing.assert_close(x.grad, grad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_grad_matches_eager_and_draws_fresh_noise():
    w = torch.randn(16, 16, device="cuda")

    def fn(x):
        noise = torch.randn_like(x)
        y = torch.tanh(x @ w) + 0.0 * noise
        return (y**2).sum(), {"noise_mean": noise.mean()}

    g = GraphedGrad(fn)
    x = torch.randn(4, 16, device="cuda")
    value, grad, aux = g(x)
    xe = x.clone().requires_grad_(True)
    ve, _ = fn(xe)
    (ge,) = torch.autograd.grad(ve, xe)
    torch.testing.assert_close(value, ve.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ge, rtol=1e-5, atol=1e-5)
    first = aux["noise_mean"].item()
    x2 = torch.randn(4, 16, device="cuda")
    value2, grad2, aux2 = g(x2)
    assert aux2["noise_mean"].item() != first  # the generator advances on replay
    xe2 = x2.clone().requires_grad_(True)
    (ge2,) = torch.autograd.grad(fn(xe2)[0], xe2)
    torch.testing.assert_close(grad2, ge2, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_stream_takes_the_current_streams_priority(monkeypatch):
    """A graph replays at the priority it was captured at (per-node priorities), so a term run on a
    high-priority stream must be captured on one: GraphedGrad's capture stream copies the current priority."""
    made = []
    real = torch.cuda.Stream

    def spy(*args, **kwargs):
        s = real(*args, **kwargs)
        made.append(s)
        return s

    monkeypatch.setattr(torch.cuda, "Stream", spy)
    for priority in (0, -1):
        with torch.cuda.stream(real(priority=priority)):
            GraphedGrad(lambda x: ((x**2).sum(), {}))(torch.randn(8, device="cuda"))
        assert made[-1].priority == real(priority=priority).priority
    assert made[0].priority > made[-1].priority  # -1 is a real, higher priority on this device
