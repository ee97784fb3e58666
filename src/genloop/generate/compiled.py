"""The decode step as one `torch.compile` graph (Engine(compile=True), `--compile`).

On a CPU, a decode step of a small model is mostly per-op cost: SmolLM2 runs ~900 eager ops per step,
and at batch 1 their dispatch takes longer than the int4 matmuls themselves. Inductor fuses the
norms, rotations, activations and residual adds into a few C++ loops around the matmul kernels,
and the step runs as one graph (SmolLM2 int4, batch 1, here: 15 ms a step eager, 10 compiled).

The graph only reads the KV cache. Attention takes the cached keys and the step's new key as two
parts of one softmax; the new keys and values leave the graph and one indexed copy per tensor
writes them after it. (Writing the cache inside the graph made inductor copy the whole buffer on
every step: seconds a step.) Batch size and context length are dynamic, so there are two graphs,
one row and many rows, and quantized models on CPUs without native bf16 add one per range of rows
where a layer changes path; all compile when the engine starts (`warm_up`; for SmolLM2 the first
time, 3 minutes with AVX-512, 6 for int4's three graphs on a 2-core AVX2 CPU). Inductor caches the
compiled code on disk under GENLOOP_HOME, and a later process with the same model starts in well
under a minute.

Inductor's fused loops round differently from eager PyTorch, and their vectorization may depend on
the batch: greedy text can differ from the eager engine at near-ties, and batched from alone.
That is why it is an option, not the default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from genloop.home import cache_dir
from genloop.model.quantize import path_rows

if TYPE_CHECKING:
    from genloop.generate.kv_cache import CacheView, SlotCache
    from genloop.model import DecoderLM


class _ReadOnlyCache:
    """The cache as the compiled graph sees it: past keys/values to read, new ones collected."""

    def __init__(self, k: Tensor, v: Tensor, past: Tensor, seen: Tensor) -> None:
        # k/v: the whole slot buffers [L, slots, H_kv, max_len, d]; seen [B, S]: key j < past[b]
        self.k, self.v, self.past, self.seen = k, v, past, seen
        self.new_k: list[Tensor] = []
        self.new_v: list[Tensor] = []

    def batch_positions(self, t: int) -> Tensor:
        return self.past[:, None]

    def batch_mask(self, t: int) -> Tensor:
        return self.seen

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One query per row over [cached keys | its own new key], query heads grouped by their
        key/value head; softmax in fp32. q [B, H, 1, d], k/v [B, H_kv, 1, d] -> [B, H, 1, d]."""
        self.new_k.append(k)
        self.new_v.append(v)
        b, h, _, d = q.shape
        n_kv, s = k.shape[1], self.seen.shape[1]
        past_k, past_v = self.k[layer, :b, :, :s], self.v[layer, :b, :, :s]
        qg = q.reshape(b, n_kv, h // n_kv, d) * d**-0.5
        old = torch.matmul(qg, past_k.transpose(-1, -2)).float()
        old = old.masked_fill(~self.seen[:, None, None, :], float("-inf"))
        new = torch.matmul(qg, k.transpose(-1, -2)).float()
        weights = torch.cat((old, new), dim=-1).softmax(-1).to(v.dtype)
        out = torch.matmul(weights[..., :s], past_v) + weights[..., s:] * v
        return out.reshape(b, h, 1, d)


def _use_our_inductor_cache() -> None:
    """Inductor's on-disk cache under GENLOOP_HOME (GENLOOP_CACHE), unless the user chose a place.
    Importing parts of torch already sets the variable to inductor's default (/tmp/torchinductor_USER),
    so that value counts as unchosen; inductor reads it again whenever it compiles."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


class CompiledDecode:
    """model(ids, cache=view, logits_to_keep=1)[:, -1] for a decode step, as one compiled graph."""

    def __init__(self, model: DecoderLM, cache: SlotCache) -> None:
        _use_our_inductor_cache()
        self.model, self.cache = model, cache
        for buffer in (cache.k, cache.v):  # fixed shapes: no symbols that equal sizes could share
            torch._dynamo.mark_static(buffer)
        self._graph = torch.compile(self._forward, dynamic=True)

    def _forward(self, ids: Tensor, past: Tensor, seen: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        reader = _ReadOnlyCache(k, v, past, seen)
        logits = self.model(ids, cache=reader, logits_to_keep=1)[:, -1]  # type: ignore[arg-type]
        return logits, torch.stack(reader.new_k), torch.stack(reader.new_v)

    def warm_up(self) -> None:
        """Compile the graphs now (one row, many rows, and one per range where a quantized layer
        changes path, `path_rows`), so no request waits on it: without native bf16 the 32nd row
        took SmolLM2's int8 head to its dense path, and that batch waited a minute for a new graph.
        Dummy steps; their outputs are dropped, the cache is not written. The cached length differs
        from every row count: dynamo gives equal sizes one symbol, and a graph warmed on 2 rows over
        2 positions only took steps whose context length equalled their batch size."""
        slots = self.cache.k.shape[1]
        batches = sorted({1, min(2, slots), *(r for r in path_rows(self.model) if r <= slots)})
        cached = next(n for n in range(3, 3 + len(batches) + 1) if n not in batches)
        for rows in batches:
            ids = torch.zeros(rows, 1, dtype=torch.long)
            past = torch.full((rows,), cached, dtype=torch.long)
            seen = torch.ones(rows, cached, dtype=torch.bool)
            try:
                self._graph(ids, past, seen, self.cache.k, self.cache.v)
            except Exception as exc:  # inductor needs a working C++ compiler; say so in one line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ValueError(
                    f"torch.compile could not build the decode step ({type(exc).__name__}: {first[:200]}); "
                    "it needs a working C++ compiler (g++): install one, or run without --compile"
                ) from exc

    def __call__(self, ids: Tensor, view: CacheView) -> Tensor:
        """Logits [B, vocab] of the next token; the step's keys/values are written to the cache."""
        assert view.start == 0, "decoding sequences sit in slots 0..B-1"
        seen = torch.arange(view.total - 1)[None, :] < view.past[:, None]
        # the whole buffers, sliced inside: their shapes never change, so they cause no recompiles
        logits, k, v = self._graph(ids, view.past, seen, self.cache.k, self.cache.v)
        slots = torch.arange(view.start, view.stop)
        # [L, B, H, 1, d] -> [B, L, H, d]: the layout of cache[:, slots, :, positions]
        self.cache.k[:, slots, :, view.past] = k[:, :, :, 0].transpose(0, 1)
        self.cache.v[:, slots, :, view.past] = v[:, :, :, 0].transpose(0, 1)
        return logits
