"""The fused, chunked head cross-entropy against PyTorch's own: same loss, same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genloop.model.head_loss as head_loss
from genloop.model import build_model, preset
from genloop.model.head_loss import head_cross_entropy


def _inputs(rows: int = 300, d: int = 32, vocab: int = 1000) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, d, generator=g, requires_grad=True)
    w = (torch.randn(vocab, d, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[::7] = -100
    return h, w, y


@pytest.mark.parametrize("chunk_rows", [1, 64, 10_000])
def test_fp32_equals_cross_entropy_in_loss_and_gradients(monkeypatch, chunk_rows):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", chunk_rows * 1000)
    h, w, y = _inputs()
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=-100)
    gh, gw = torch.autograd.grad(ref * 3.0, (h, w))
    ours = head_cross_entropy(h, w, y)
    oh, ow = torch.autograd.grad(ours * 3.0, (h, w))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)  # float32 sums in another order
    torch.testing.assert_close(oh, gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ow, gw, rtol=1e-5, atol=1e-7)
    assert oh[::7].abs().max() == 0  # ignored rows get no gradient


def test_bf16_autocast_is_close_to_the_float32_loss_of_bf16_logits():
    h, w, y = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.t()).float(), y, ignore_index=-100)
        ours = head_cross_entropy(h, w, y)
    assert abs(ours.item() - ref.item()) < 2e-3
    gh = torch.autograd.grad(ref, h)[0]
    oh = torch.autograd.grad(ours, h)[0]
    assert (oh - gh).abs().max() < 0.02 * gh.abs().max()


def test_bf16_rows_whose_label_probability_underflows_keep_an_exact_loss():
    h = torch.zeros(2, 4)
    h[:, 0] = 1.0
    w = torch.zeros(3, 4)
    w[0, 0] = 200.0  # label 1 sits 200 nats below the top logit: p underflows even in bf16
    y = torch.tensor([1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(h, w, y)
    assert loss.item() == pytest.approx(100.0, rel=1e-3)


def test_no_grad_all_ignored_and_frozen_weight():
    h, w, y = _inputs()
    with torch.no_grad():
        assert head_cross_entropy(h, w, y).item() == pytest.approx(
            F.cross_entropy(h @ w.t(), y, ignore_index=-100).item(), abs=1e-6
        )
    assert head_cross_entropy(h, w, torch.full_like(y, -100)).item() == 0.0
    frozen = w.detach()
    loss = head_cross_entropy(h, frozen, y)
    loss.backward()
    assert h.grad is not None and frozen.grad is None


def test_model_loss_with_labels_matches_logits_path_and_tied_gradients():
    torch.manual_seed(0)
    model = build_model(preset("tiny-gpt2", vocab_size=500, dropout=0.0))
    x = torch.randint(0, 500, (2, 16))
    y = torch.roll(x, -1, 1)
    y[:, -1] = -100
    ref = F.cross_entropy(model(x).reshape(-1, 500), y.reshape(-1), ignore_index=-100)
    ref.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = model(x, labels=y)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
