"""Behaviour of the model library itself: causality, caching, masks, the three assemblies learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloop.generate import greedy_decode, greedy_seq2seq
from genloop.model import DynamicCache, build_model, model_stats, preset


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_decoder_is_causal(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(preset(name)).eval()
    ids = torch.randint(0, 512, (2, 24))
    base = model(ids)
    for t in (0, 5, 17, 22):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, 512, changed[:, t + 1 :].shape)
        out = model(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_seq2seq_decoder_is_causal_and_encoder_is_not() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny-seq2seq")).eval()
    src, tgt = torch.randint(0, 512, (2, 10)), torch.randint(0, 512, (2, 12))
    base = model(src, tgt)
    tgt2 = tgt.clone()
    tgt2[:, 6:] = (tgt2[:, 6:] + 1) % 512
    torch.testing.assert_close(model(src, tgt2)[:, :6], base[:, :6], atol=1e-5, rtol=0)
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1) % 512
    assert not torch.allclose(model(src2, tgt)[:, 0], base[:, 0])  # every target sees the whole source


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_kv_cache_decoding_matches_full_forward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(preset(name)).eval()
    ids = torch.randint(0, 512, (3, 16))
    full = model(ids)
    cache = DynamicCache()
    steps = [model(ids[:, :9], cache=cache)]
    steps += [model(ids[:, i : i + 1], cache=cache) for i in range(9, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_padding_mask_isolates_padded_keys() -> None:
    """Right padding: a padded row gives the same logits on its real tokens as the unpadded sequence."""
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    seq = torch.randint(1, 512, (1, 6))
    padded = torch.cat((seq, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, :6], model(seq), atol=1e-5, rtol=1e-4)


def test_encoder_padding_mask_and_embeddings() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny-encoder")).eval()
    seq = torch.randint(1, 512, (1, 6))
    padded = torch.cat((seq, torch.zeros(1, 3, dtype=torch.long)), dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    e1, e2 = model.embed_text(seq), model.embed_text(padded, mask)
    torch.testing.assert_close(e1, e2, atol=1e-5, rtol=1e-4)
    assert torch.allclose(e1.norm(dim=-1), torch.ones(1))


def test_gqa_and_mqa_shapes_and_stats() -> None:
    for kv in (4, 2, 1):
        cfg = preset("tiny", n_kv_heads=kv)
        model = build_model(cfg)
        assert model.decoder.blocks[0].attn.k.out_features == kv * cfg.dim_per_head
        assert sum(p.numel() for p in model.parameters()) == model_stats(cfg).params
        assert model(torch.randint(0, 512, (1, 5))).shape == (1, 5, 512)


@pytest.mark.slow
def test_seq2seq_learns_to_reverse_sequences() -> None:
    """Bidirectional encoder + cross-attending decoder: reverse random 8-token sequences, 100% exact."""
    torch.manual_seed(0)
    vocab, length, bos = 24, 8, 1
    cfg = preset(
        "tiny-seq2seq",
        vocab_size=vocab,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=176,
        max_seq_len=16,
        decoder_start_token_id=bos,
    )
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=1500, pct_start=0.1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = torch.randint(2, vocab, (n, length))
        return src, src.flip(1)

    for _ in range(1500):
        src, tgt = batch(128)
        dec_in = torch.cat((torch.full((128, 1), bos), tgt[:, :-1]), dim=1)
        loss = F.cross_entropy(model(src, dec_in).reshape(-1, vocab), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    torch.manual_seed(123)
    src, tgt = batch(500)
    pred = greedy_seq2seq(model, src, length)
    exact = (pred == tgt).all(dim=1).float().mean().item()
    assert exact == 1.0, f"exact match {exact:.3f}, last loss {loss.item():.4f}"


def test_encoder_learns_toy_classification() -> None:
    """Label: does token 7 occur in the sequence? Needs attention over all positions."""
    torch.manual_seed(0)
    vocab, length = 32, 12
    model = build_model(preset("tiny-encoder", vocab_size=vocab, max_seq_len=16))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(8, vocab, (n, length))
        labels = torch.randint(0, 2, (n,))
        pos = torch.randint(0, length, (n,))
        ids[labels.bool(), pos[labels.bool()]] = 7
        return ids, labels

    for _ in range(400):
        ids, labels = batch(64)
        loss = F.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, labels = batch(1000)
    with torch.no_grad():
        acc = (model(ids).argmax(-1) == labels).float().mean().item()
    assert acc >= 0.97, acc


def test_greedy_decode_with_cache_matches_argmax_of_full_forward() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    prompt = torch.randint(0, 512, (2, 5))
    out = greedy_decode(model, prompt, 6)
    with torch.no_grad():
        full = model(out[:, :-1])
    assert torch.equal(full[:, 4:].argmax(-1), out[:, 5:])
