"""The three assemblies of one transformer family: decoder-only (GPT-2 / Llama style), encoder-decoder
(T5 style: bidirectional encoder, decoder with cross-attention) and encoder-only (BERT style, for
embeddings and classifiers). Blocks are pre-norm; which parts they hold follows `ModelConfig`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloop.config import ModelConfig
from genloop.model import native_block
from genloop.model.attention import Attention, KVCache
from genloop.model.head_loss import head_cross_entropy
from genloop.model.layers import MLP, Embeddings, Rotary, make_norm


def _identity(x: Tensor) -> Tensor:
    return x


class Block(nn.Module):
    """x + attn(norm(x)) [+ cross(norm(x), encoder)] + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.norm_cross = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, layer, cross=True) if cross else None
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None,
        is_causal: bool,
        rotary: tuple[Tensor, Tensor] | None,
        cache: KVCache | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        drop = self.dropout if self.training else _identity  # a module call less per residual
        x = x + drop(self.attn(self.norm1(x), mask=mask, is_causal=is_causal, rotary=rotary, cache=cache))
        if self.cross_attn is not None and self.norm_cross is not None:
            x = x + drop(self.cross_attn(self.norm_cross(x), mask=context_mask, context=context, cache=cache))
        return x + drop(self.mlp(self.norm2(x)))


class Stack(nn.Module):
    """Embedded tokens through N blocks and a final norm; builds the masks and positions once."""

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(Block(cfg, i, cross) for i in range(n_layers))
        self.norm = make_norm(cfg)
        self.rotary = Rotary(cfg.dim_per_head, cfg.rope_theta) if cfg.pos_emb == "rope" else None

    def forward(
        self,
        h: Tensor,
        positions: Tensor,
        *,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        batch_mask = getattr(cache, "batch_mask", None)
        if batch_mask is not None:  # an engine cache: each row has its own length, the cache knows the mask
            mask, past = batch_mask(h.shape[1]), -1
        else:
            past = cache.past_length() if cache is not None else 0
            mask = self_mask(h.shape[1], past, attention_mask, self.causal, h.device)
        rotary = self.rotary(positions, h.dtype) if self.rotary is not None else None
        cmask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        fused = context is None and native_block.usable(h, cache, rotary, self.training)
        for block in self.blocks:
            weights = native_block.block_weights(block) if fused else None
            if weights is not None and rotary is not None:
                h = native_block.decode_block(block, weights, h, cache, rotary)
                continue
            # SDPA's is_causal aligns the triangle top-left: right only when there is no past
            h = block(
                h,
                mask=mask,
                is_causal=self.causal and past == 0,
                rotary=rotary,
                cache=cache,
                context=context,
                context_mask=cmask,
            )
        return self.norm(h)


def self_mask(
    t: int, past: int, attention_mask: Tensor | None, causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean [B|1, 1, T, past+T] mask, or None when SDPA's own causal/unmasked path is exact.

    attention_mask [B, past+T] marks real tokens with 1. A query may always see itself, so a row that
    is all padding yields garbage rather than NaN (its output is ignored anyway). A 4-D boolean mask
    [B, 1, T, past+T] is used as given: packed training rows pass a block-diagonal causal one, so
    sequences sharing a row never attend to each other.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    if attention_mask is None and (past == 0 or not causal or t == 1):
        return None
    q_idx = torch.arange(past, past + t, device=device)[:, None]
    k_idx = torch.arange(past + t, device=device)[None, :]
    mask = (k_idx <= q_idx) if causal else torch.ones(t, past + t, dtype=torch.bool, device=device)
    mask = mask[None, None]
    if attention_mask is not None:
        mask = (mask & attention_mask.bool()[:, None, None, :]) | (k_idx == q_idx)[None, None]
    return mask


def cache_positions(input_ids: Tensor, cache: KVCache | None) -> Tensor:
    """Positions of new tokens: after the cached ones (per row when the cache is an engine's)."""
    per_row = getattr(cache, "batch_positions", None)
    if per_row is not None:
        return per_row(input_ids.shape[1])
    return default_positions(input_ids, cache.past_length() if cache is not None else 0)


def default_positions(input_ids: Tensor, past: int) -> Tensor:
    t = input_ids.shape[1]
    return torch.arange(past, past + t, device=input_ids.device).expand(input_ids.shape[0], t)


class _Base(nn.Module):
    """Weight init and the things all assemblies share."""

    config: ModelConfig

    def _init_weights(self, n_layers: int) -> None:
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                # residual projections scaled down with depth (GPT-2) so the stream's variance stays ~1
                scale = 1 / math.sqrt(2 * n_layers) if name.endswith((".o", ".down")) else 1.0
                nn.init.normal_(module.weight, 0.0, std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class DecoderLM(_Base):
    """Decoder-only language model: causal self-attention, next-token logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.decoder = Stack(cfg, cfg.n_layers, causal=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights(cfg.n_layers)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        positions = position_ids if position_ids is not None else cache_positions(input_ids, cache)
        h = self.embed(input_ids, positions)
        return self.decoder(h, positions, attention_mask=attention_mask, cache=cache)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        labels: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """input_ids [B, T] -> logits [B, T, vocab]. attention_mask covers past + new tokens.

        logits_to_keep=k computes only the last k positions' logits: generation needs one, and the
        output head is a fifth of a prefill's FLOPs for a 49k vocabulary. With `labels` [B, T]
        (already aligned to the next token, -100 ignored) the result is the mean cross-entropy
        instead, computed without materializing the logits (see head_loss); reduction="none" gives
        each position's cross-entropy [B, T] (0 where ignored), i.e. minus the token log-probabilities
        that preference and RL objectives sum per sequence.
        """
        h = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        if labels is not None:
            fused = type(self.lm_head) is nn.Linear and self.lm_head.bias is None
            if reduction == "mean" and fused:
                return head_cross_entropy(h, self.lm_head.weight, labels)
            logits = self.lm_head(h).float()
            flat = F.cross_entropy(
                logits.flatten(0, -2), labels.reshape(-1), ignore_index=-100, reduction=reduction
            )
            return flat.view(labels.shape) if reduction == "none" else flat
        return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)


class EncoderDecoderLM(_Base):
    """T5-style seq2seq model: shared embeddings, bidirectional encoder, cross-attending decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights(cfg.n_layers + cfg.decoder_layers)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        positions = default_positions(input_ids, 0)
        return self.encoder(self.embed(input_ids, positions), positions, attention_mask=attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_states: Tensor,
        encoder_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        positions = cache_positions(decoder_input_ids, cache)
        h = self.decoder(
            self.embed(decoder_input_ids, positions),
            positions,
            attention_mask=decoder_attention_mask,
            cache=cache,
            context=encoder_states,
            context_mask=encoder_mask,
        )
        return self.lm_head(h)

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits [B, T_dec, vocab] for a batch of source/target pairs."""
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask)


class EncoderModel(_Base):
    """BERT-style bidirectional encoder: pooled sentence embeddings and a classification head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.classifier = nn.Linear(cfg.d_model, cfg.num_labels)
        self._init_weights(cfg.n_layers)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        positions = default_positions(input_ids, 0)
        return self.encoder(self.embed(input_ids, positions), positions, attention_mask=attention_mask)

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        if self.config.pooling == "first":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        w = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Unit-length sentence embeddings [B, d] (pooled, L2-normalized)."""
        pooled = self.pool(self.hidden_states(input_ids, attention_mask), attention_mask)
        return F.normalize(pooled.float(), dim=-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits [B, num_labels]."""
        return self.classifier(self.pool(self.hidden_states(input_ids, attention_mask), attention_mask))


Model = DecoderLM | EncoderDecoderLM | EncoderModel


def build_model(cfg: ModelConfig) -> Model:
    """A freshly initialized model of the configured assembly."""
    cls = {"decoder": DecoderLM, "encoder-decoder": EncoderDecoderLM, "encoder": EncoderModel}[cfg.arch]
    return cls(cfg)
