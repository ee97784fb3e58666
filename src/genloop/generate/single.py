"""Requests that run alone, outside the continuous batch: beam search, and every request of an
encoder-decoder model. A mixin of `Engine`: it uses the engine's model, sampler and `_accept`/`_emit`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from genloop.model import DecoderLM, DynamicCache, EncoderDecoderLM

if TYPE_CHECKING:
    from genloop.generate.request import Request
    from genloop.generate.request import Sequence as Seq


class SingleRequestPaths:
    model: Any
    config: Any
    tokenizer: Any
    sampler: Any
    eos_ids: set[int]
    max_len: int
    _cond: Any
    _waiting: Any

    def _accept(self, seq: Seq, token: int, logprob: float | None, top: Any) -> None:
        raise NotImplementedError

    def _emit(
        self,
        seq: Seq,
        text: str,
        tokens: list[int],
        logprob: float | None,
        top: Any,
        stop_token: int | None = None,
    ) -> None:
        raise NotImplementedError

    def _beam_search(self, request: Request) -> None:
        """Deterministic beam search (translation, summarization): n = the best `n` beams. It runs in
        the scheduler thread and holds other requests while it runs; penalties and filters do not apply."""
        from genloop.generate.beam import beam_search

        params = request.params
        assert isinstance(self.model, DecoderLM)
        eos = sorted(self.eos_ids) if self.eos_ids and not params.ignore_eos else None
        limit = params.max_tokens or self.max_len - len(request.prompt_ids)
        beams = beam_search(
            self.model,
            request.prompt_ids,
            params.num_beams,
            limit,
            eos,
            params.length_penalty,
            params.early_stopping,
            num_return_sequences=params.n,
        )
        for seq, (tokens, _score) in zip(request.seqs, beams, strict=False):
            for token in tokens:  # an ending EOS is among them: _accept turns it into finish "stop"
                if seq.finish_reason is None:
                    self._accept(seq, token, None, None)
            if seq.finish_reason is None:
                seq.finish_reason = "length"
                self._emit(seq, seq.stop.flush(), [], None, None)
        request.done.set()

    def _seq2seq_step(self) -> None:
        """Encoder-decoder models: one request at a time, encoder once, cross-attention K/V cached."""
        with self._cond:
            if not self._waiting:
                return
            seq = self._waiting.popleft()
        model = self.model
        assert isinstance(model, EncoderDecoderLM)
        src = torch.tensor([seq.prompt])
        enc = model.encode(src)
        cache = DynamicCache()
        start = self.config.decoder_start_token_id
        step = torch.tensor([[start if start is not None else (self.tokenizer.bos_token_id or 0)]])
        while seq.finish_reason is None and not seq.request.cancelled:
            logits = model.decode(step, enc, cache=cache)[:, -1]
            self._sample_seq2seq(seq, logits)
            step = torch.tensor([[seq.out[-1] if seq.out else 0]])
        if seq.request.cancelled:
            seq.finish_reason = seq.finish_reason or "cancelled"
        if all(s.finish_reason is not None for s in seq.request.seqs):
            seq.request.done.set()

    def _sample_seq2seq(self, seq: Seq, logits: torch.Tensor) -> None:
        out = self.sampler(logits, [seq.request.params], [seq.generator], [seq.prompt], [seq.out], None)
        self._accept(
            seq,
            out.tokens[0],
            out.logprobs[0] if out.logprobs else None,
            out.top_logprobs[0] if out.top_logprobs else None,
        )
