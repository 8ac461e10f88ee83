"""The demo and random-weight builders: seeded, reproducible, and leaving the caller's RNG alone."""

import torch

from splatvlm.demo import seeded, tiny_components


def test_seeded_draws_repeat_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded("cpu", 0):
        a = torch.randn(5)
    with seeded("cpu", 0):
        b = torch.randn(5)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)  # as if the builds had not happened


def test_tiny_components_are_the_same_on_every_build():
    a, b = tiny_components("mvdream"), tiny_components("mvdream")
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
