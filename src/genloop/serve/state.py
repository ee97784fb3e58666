"""What one running server holds: the engine (None while it loads), the store, metrics and settings."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from fastapi import Request

from genloop.serve.config import LimitsConfig
from genloop.serve.errors import APIError
from genloop.serve.limits import Limiter
from genloop.serve.metrics import Metrics

if TYPE_CHECKING:
    from genloop.generate import Engine
    from genloop.serve.store import Store


@dataclass
class ServerState:
    model_name: str
    model_path: Path
    model_version: str
    store: Store | None
    api_keys: frozenset[str] = frozenset()
    max_queue: int = 256
    engine_options: dict[str, Any] = field(default_factory=dict)
    engine: Engine | None = None
    load_error: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # The `postprocess:` section of the serve config, as given (the pipeline is built from it).
    postprocess_config: dict[str, Any] | str | None = None
    pipeline: Any = None  # the postprocess Pipeline the engine applies (None: answers are raw)
    limiter: Limiter = field(init=False)
    _swapping: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.limits)

    @property
    def fingerprint(self) -> str:
        return f"genloop-{self.model_version}"

    @property
    def max_len(self) -> int | None:
        return self.engine.max_len if self.engine is not None else None

    @staticmethod
    def of(request: Request) -> ServerState:
        return request.app.state.genloop  # type: ignore[no-any-return]

    @staticmethod
    def ready(request: Request) -> ServerState:
        """The state, with a loaded engine; 503 with Retry-After while the model loads."""
        state = ServerState.of(request)
        if state.engine is None:
            if state.load_error is not None:
                raise APIError(503, f"The model failed to load: {state.load_error}", code="model_load_failed")
            raise APIError(503, "The model is still loading; retry in a few seconds.", retry_after=2)
        return state

    def check_model(self, name: str) -> None:
        if name not in (self.model_name, str(self.model_path), self.model_path.name):
            raise APIError(
                404,
                f"The model '{name}' does not exist on this server; it serves '{self.model_name}' "
                "(see GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    def load(self) -> None:
        """Load the engine (in a background thread, so /health answers 503 meanwhile)."""

        def work() -> None:
            from genloop.generate import Engine

            try:
                engine = Engine(self.model_path, **self.engine_options)
            except Exception as exc:  # shown on /health and in every API answer
                self.load_error = f"{type(exc).__name__}: {exc}"
                return
            self.metrics.watch(lambda: engine.queued, lambda: engine.running)
            self.engine = engine

        threading.Thread(target=work, name="genloop-load", daemon=True).start()

    def swap(self, path: Path, version: str) -> None:
        """Serve another model without downtime (blocking; call from a worker thread).

        The new engine loads beside the old one; then new requests go to it, while the old engine
        finishes every request it already holds and only then shuts down. Runs keep a reference to
        the engine they started on, so nothing in flight changes model mid-answer.
        """
        from genloop.generate import Engine

        with self._swapping:
            engine = Engine(path, **self.engine_options)
            old = self.engine
            self.engine, self.model_path, self.model_version = engine, path, version
            self.metrics.watch(lambda: engine.queued, lambda: engine.running)
            if old is not None:
                threading.Thread(target=_retire, args=(old,), name="genloop-retire", daemon=True).start()

    def embed(self, batches: list[list[int]], dimensions: int | None) -> list[torch.Tensor]:
        """Mean-pooled last hidden states, L2-normalized (runs on the engine thread)."""
        assert self.engine is not None
        model = self.engine.model
        out = []
        for ids in batches:
            if hasattr(model, "hidden_states"):
                h = model.hidden_states(torch.tensor([ids]))
            else:  # encoder-decoder: the encoder's states
                h = model.encode(torch.tensor([ids]))  # type: ignore[union-attr]
            vec = h[0].float().mean(0)
            if dimensions is not None:
                vec = vec[:dimensions]
            out.append(F.normalize(vec, dim=0))
        return out


def _retire(engine: Engine, poll: float = 0.05, limit: float = 600.0) -> None:
    """Close a replaced engine once it has nothing queued or running (or after `limit` seconds).
    The first second is grace for a request that took the old engine just before the swap and has
    not submitted yet."""
    time.sleep(1.0)
    deadline = time.monotonic() + limit
    while (engine.queued or engine.running) and time.monotonic() < deadline:
        time.sleep(poll)
    engine.close()
