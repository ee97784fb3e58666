"""The generation engine: continuous batching over a preallocated KV cache.

One background thread runs the scheduler. Each iteration it (1) admits waiting sequences into free
slots, reusing any cached prefix of their prompts, (2) prefills them: a group of short prompts in one
padded forward, or one chunk of a long prompt (chunks keep running streams from stalling behind it;
see prefill.py), and (3) runs one decode step for all running sequences together. Sequences join
and leave between steps; callers get text deltas through a callback (`submit`), an async iterator
(`stream`) or a blocking call (`generate`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import itertools
import threading
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genloop.checkpoint import resolve
from genloop.checkpoint.directory import load_generation_config
from genloop.generate.kv_cache import PrefixCache, SlotCache
from genloop.generate.loading import DTYPES, load_for_inference
from genloop.generate.postprocessing import new_stream, prompt_text, release
from genloop.generate.prefill import Prefill
from genloop.generate.request import Delta, Request, RequestOutput
from genloop.generate.request import Sequence as Seq
from genloop.generate.sampling import Sampler, SamplingParams, make_generator
from genloop.generate.single import SingleRequestPaths
from genloop.generate.stop import StopMatcher
from genloop.model import DecoderLM, EncoderDecoderLM
from genloop.model.fuse import fuse_projections
from genloop.model.native_block import native_blocks
from genloop.preprocess import Tokenizer

if TYPE_CHECKING:
    from genloop.postprocess import Pipeline

Prompt = str | Sequence[Mapping[str, Any]]
# The fastest dtype measured here (benchmarks/bench_generate.py, AVX2): int4 decodes 7.6x faster than
# transformers fp32 and is the fastest at 8 and 32 concurrent streams; `dtype=` (`--dtype`) overrides it.
DEFAULT_CPU_DTYPE = "int4"
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop engine threads before the interpreter tears down: a thread still holding its OpenMP team
    at exit aborts the process ("terminate called without an active exception")."""
    for engine in list(_LIVE):
        engine.close()


class Engine(Prefill, SingleRequestPaths):
    """Generation over one model directory (or registered name), shared by CLI, server and evaluation."""

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        max_batch: int = 32,
        max_seq_len: int = 2048,
        prefill_chunk: int = 2048,
        prefix_cache_tokens: int = 16384,
        postprocess: Pipeline | None = None,
        compile: bool = False,
        share_prefixes: bool = True,
    ) -> None:
        self.path = resolve(model)
        self.share_prefixes = share_prefixes  # a group's common prompt beginning prefilled once (prefill.py)
        self.compile = compile  # the decode step as one torch.compile graph (generate/compiled.py)
        self._compiled: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
        # Applied to every completion's text, streamed or not (genloop.postprocess); None: raw text, as
        # evaluation and training rollouts need it.
        self.postprocess = postprocess if postprocess is not None and not postprocess.is_noop() else None
        self.dtype = DEFAULT_CPU_DTYPE if dtype == "auto" else dtype
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype '{dtype}' is not supported; choose auto or one of {', '.join(DTYPES)}")
        self.tokenizer = Tokenizer.load(self.path)
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._closed = False
        self._waiting: deque[Seq] = deque()
        self._slots: list[Seq] = []  # decoding sequences first, then those being prefilled
        self._n_decoding = 0
        # Every tensor operation runs on the engine's own thread, loading included. libgomp throttles its
        # spin-waits once a process has more OpenMP workers than cores, so a second thread with its own
        # team (the caller's) would make each parallel kernel wait on a futex: 2-3x slower int4 decode.
        loaded: Future[DecoderLM | EncoderDecoderLM] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(loaded, max_batch, max_seq_len), name="genloop-engine", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)
        self.model = loaded.result()
        self.config = self.model.config
        generation = load_generation_config(self.path)
        eos = generation.get("eos_token_id")
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        eos_ids |= {self.tokenizer.eos_token_id, self.config.eos_token_id}
        if self.tokenizer.chat_template and "<|im_end|>" in self.tokenizer.chat_template:
            eos_ids.add(self.tokenizer.token_to_id("<|im_end|>"))
        self.eos_ids = {i for i in eos_ids if isinstance(i, int)}
        # Prompt tokens one step computes with no stream decoding (a sixteenth while some do): a burst of
        # 32 chat requests is one forward, a long prompt goes in chunks of this size (prefill.py).
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.vocab_size = self.config.vocab_size
        self.prefix = PrefixCache(capacity=prefix_cache_tokens)
        self.sampler = Sampler()
        self._ids = itertools.count()
        self.stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "prefix_hit_tokens": 0}
        self.stats["shared_prefix_tokens"] = 0  # prompt tokens a group's rows did not prefill again

    # ------------------------------------------------------------------ public API

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids: raw text with the tokenizer's BOS policy, or chat messages through the template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        return list(ids)  # type: ignore[arg-type]

    def submit(
        self,
        prompt: Prompt | list[int],
        params: SamplingParams | None = None,
        *,
        on_delta: Any = None,
        response_format: dict[str, Any] | None = None,
        request_id: str | None = None,
        context: str | None = None,
    ) -> Request:
        """Queue a request; `on_delta(Delta)` is called from the engine thread as text arrives.
        `context` is the prompt as text for postprocessing hooks (relevance) when `prompt` is token ids."""
        params = (params or SamplingParams()).validate(self.vocab_size)
        ids = (
            list(prompt)
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            else self.encode_prompt(prompt)
        )  # type: ignore[arg-type]
        if not ids:
            raise ValueError("the prompt is empty: give at least one token of text")
        room = self.max_len - len(ids)
        if room < 1:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but the context holds {self.max_len}; shorten the prompt"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            params = dataclasses.replace(params, max_tokens=room)
        request = Request(
            request_id or f"req-{uuid.uuid4().hex[:12]}", ids, params, on_delta, response_format
        )
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            request.seqs.append(
                Seq(
                    request,
                    i,
                    make_generator(seed),
                    StopMatcher(params.stop),
                    self._constraint(response_format),
                    post=new_stream(self.postprocess, context or prompt_text(prompt)),
                )
            )
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.extend(request.seqs)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += len(ids)
            self._cond.notify()
        return request

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Complete every prompt (batched together) and wait for all of them."""
        # one prompt is a str, a list of chat messages, or a list of token ids
        single = isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and bool(prompts) and isinstance(prompts[0], Mapping | int)
        )
        batch = [prompts] if single else list(prompts)  # type: ignore[list-item]
        requests = [self.submit(p, params, response_format=response_format) for p in batch]  # type: ignore[arg-type]
        for r in requests:
            r.done.wait()
            if r.error is not None:
                raise r.error
        return [r.output() for r in requests]

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> AsyncIterator[Delta]:
        """Yield deltas as they are generated; leaving the loop early cancels the request at once."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        request = self.submit(
            prompt,
            params,
            response_format=response_format,
            on_delta=lambda d: loop.call_soon_threadsafe(queue.put_nowait, d),
        )
        request.on_error = lambda e: loop.call_soon_threadsafe(queue.put_nowait, e)
        remaining = len(request.seqs)
        try:
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            if remaining:
                self.cancel(request)

    def cancel(self, request: Request) -> None:
        """Stop a request; its slots are freed before the next step."""
        with self._cond:
            request.cancelled = True
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine thread between two steps and return its result (for other tensor
        work on the same model, e.g. embeddings, so that it never competes with decoding for cores)."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._jobs.append((fn, future))
            self._cond.notify()
        return future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def running(self) -> int:
        return len(self._slots)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ scheduler

    def _constraint(self, response_format: dict[str, Any] | None) -> Any:
        if not response_format or response_format.get("type", "text") == "text":
            return None
        from genloop.generate.constrained import constraint_for  # llguidance only when asked for

        return constraint_for(response_format, self.tokenizer)

    def _run(self, loaded: Future[Any], max_batch: int, max_seq_len: int) -> None:
        try:
            model = load_for_inference(self.path, self.dtype)
            fuse_projections(model)  # q/k/v and gate/up as one matmul each: same numbers, fewer calls
            self.max_len = min(max_seq_len, model.config.max_seq_len)
            cache_dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
            if not self.compile and native_blocks(model):  # fp16 K/V: half the bytes each step reads
                cache_dtype = torch.float16
            self.cache = (
                SlotCache(model.config, max_batch, self.max_len, cache_dtype)
                if isinstance(model, DecoderLM)
                else None
            )
            if self.compile and self.cache is not None:
                from genloop.generate.compiled import CompiledDecode

                self._compiled = CompiledDecode(model, self.cache)
                with torch.inference_mode():
                    self._compiled.warm_up()
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(model)
        self._loop()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._slots or self._jobs or self._closed):
                    self._cond.wait()
                if self._closed:
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
            for fn, future in jobs:
                try:
                    with torch.inference_mode():
                        future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
            try:
                with torch.inference_mode():
                    self._step()
            except BaseException as exc:  # a bug must not hang callers: fail every request in flight
                self._fail_all(exc)
        self._fail_all(RuntimeError("the engine is closed"))
        for _, future in self._jobs:
            future.set_exception(RuntimeError("the engine is closed"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            seqs = list(self._slots) + list(self._waiting)
            self._slots.clear()
            self._waiting.clear()
            self._n_decoding = 0
        for request in {id(s.request): s.request for s in seqs}.values():
            self._fail_request(request, exc)

    def _fail_request(self, request: Request, exc: BaseException) -> None:
        request.error = exc
        request.done.set()
        if request.on_error is not None:
            with contextlib.suppress(Exception):  # a consumer that is gone must not stop the engine
                request.on_error(exc)

    def _step(self) -> None:
        self._drop_cancelled()
        if isinstance(self.model, EncoderDecoderLM):
            self._seq2seq_step()
            return
        self._admit()
        self._prefill()
        if self._n_decoding:
            self._decode()

    def _drop_cancelled(self) -> None:
        with self._cond:
            self._waiting = deque(s for s in self._waiting if not s.request.cancelled)
        for seq in [s for s in self._slots if s.request.cancelled]:
            self._finish(seq, "cancelled", notify=False)

    def _decode(self) -> None:
        assert self.cache is not None
        seqs = self._slots[: self._n_decoding]
        ready = [s for s in seqs if s.finish_reason is None]
        if not ready:
            return
        ids = torch.tensor([[s.tokens[-1]] for s in seqs])
        view = self.cache.view(0, len(seqs), 1)
        if self._compiled is not None:
            logits = self._compiled(ids, view)
        else:
            logits = self.model(ids, cache=view, logits_to_keep=1)[:, -1]
        view.commit()
        self._sample(seqs, logits)

    def _sample(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        allowed = None
        if any(s.constraint is not None for s in seqs):
            allowed = torch.ones(len(seqs), logits.shape[-1], dtype=torch.bool)
            for i, s in enumerate(seqs):
                if s.constraint is not None:
                    allowed[i] = self._constraint_mask(s, logits.shape[-1])
        out = self.sampler(
            logits,
            [s.request.params for s in seqs],
            [s.generator for s in seqs],
            [s.prompt for s in seqs],
            [s.out for s in seqs],
            allowed,
        )
        for i, seq in enumerate(seqs):
            self._accept(
                seq,
                out.tokens[i],
                out.logprobs[i] if out.logprobs is not None else None,
                out.top_logprobs[i] if out.top_logprobs is not None else None,
            )
        for seq in [s for s in seqs if s.finish_reason is not None]:
            self._finish(seq, seq.finish_reason)

    def _constraint_mask(self, seq: Seq, vocab: int) -> torch.Tensor:
        if seq.constraint.is_finished():
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[list(self.eos_ids)] = True
            return mask
        return seq.constraint.allowed_mask(vocab)

    def _accept(
        self, seq: Seq, token: int, logprob: float | None, top: list[tuple[int, float]] | None
    ) -> None:
        params = seq.request.params
        stop_token = token in params.stop_token_ids or (token in self.eos_ids and not params.ignore_eos)
        if seq.constraint is not None and not stop_token:
            seq.constraint.advance(token)
        if stop_token:
            seq.finish_reason = "stop"
            self._emit(seq, seq.stop.flush(), [], logprob, top, stop_token=token)
            return
        seq.out.append(token)
        self.stats["generated_tokens"] += 1
        if logprob is not None:
            seq.logprobs.append(logprob)
        if top is not None:
            seq.top_logprobs.append(top)
        text = self.tokenizer.decode(seq.out, skip_special_tokens=True)
        delta = "" if text.endswith("\ufffd") else text[len(seq.decoded) :]
        if delta:
            seq.decoded = text
        released, stopped = seq.stop.feed(delta)
        at_limit = (params.max_tokens is not None and len(seq.out) >= params.max_tokens) or len(
            seq.tokens
        ) >= self.max_len
        if stopped:
            seq.finish_reason = "stop"
        elif at_limit:
            seq.finish_reason = "length"
            released += seq.stop.flush()
        self._emit(seq, released, [token], logprob, top)

    def _emit(
        self,
        seq: Seq,
        text: str,
        tokens: list[int],
        logprob: float | None,
        top: list[tuple[int, float]] | None,
        stop_token: int | None = None,
    ) -> None:
        if seq.post is not None:
            text = release(seq, text, self.postprocess)
        seq.text += text
        callback = seq.request.on_delta
        if seq.request.params.logprobs is None:  # another row of the batch asked for them, not this one
            logprob, top = None, None
        elif not seq.request.params.logprobs:
            top = None
        if callback is None or not (text or tokens or seq.finish_reason):
            return
        delta = Delta(
            seq.request.request_id,
            seq.index,
            text,
            tokens,
            seq.finish_reason,
            [logprob] if logprob is not None else None,
            [top] if top is not None else None,
            len(seq.prompt),
            stop_token,
        )
        try:
            callback(delta)
        except Exception:  # the consumer is gone (e.g. its event loop closed): stop only its request
            seq.request.cancelled = True

    def _finish(self, seq: Seq, reason: str | None, notify: bool = True) -> None:
        """Take a sequence out of its slot, keeping running sequences packed in slots 0..B-1."""
        assert self.cache is not None
        seq.finish_reason = seq.finish_reason or reason
        slot = self._slots.index(seq)
        decoding = slot < self._n_decoding
        last = self._n_decoding - 1 if decoding else slot
        if decoding and slot != last:
            self.cache.move(last, slot)
            self._slots[slot] = self._slots[last]
            self._slots[slot].slot = slot
        if decoding:
            self._n_decoding -= 1
            if len(self._slots) > last + 1:  # a prefilling sequence follows: pack it too
                self.cache.move(last + 1, last)
                self._slots[last] = self._slots[last + 1]
                self._slots[last].slot = last
                del self._slots[last + 1]
            else:
                del self._slots[last]
        else:
            del self._slots[slot]
        if all(s.finish_reason is not None for s in seq.request.seqs):
            seq.request.done.set()
