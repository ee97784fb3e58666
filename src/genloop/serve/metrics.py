"""Prometheus metrics of one server, named like vLLM's where they mean the same thing."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80)


class Metrics:
    """One registry per app, so that several apps in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "genloop_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("genloop_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("genloop_generation_tokens", "Tokens generated", registry=r)
        self.finished = Counter(
            "genloop_request_finished", "Finished completions by finish reason", ["finish_reason"], registry=r
        )
        self.ttft = Histogram(
            "genloop_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "genloop_inter_token_latency_seconds",
            "Time between two streamed pieces of one completion",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "genloop_e2e_request_latency_seconds",
            "Whole request latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queued = Gauge("genloop_num_requests_waiting", "Sequences waiting for a slot", registry=r)
        self.running = Gauge("genloop_num_requests_running", "Sequences holding a slot", registry=r)
        self.filter_events = Counter(
            "genloop_filter_events",
            "Filter and limit events by direction (input: prompts and requests, output: answers), rule "
            "and action",
            ["direction", "rule", "action"],
            registry=r,
        )
        self.rate_limited = Counter(
            "genloop_rate_limited", "Requests answered 429 by a per-key rate limit", ["limit"], registry=r
        )

    def watch(self, queued: Callable[[], float], running: Callable[[], float]) -> None:
        """Read the engine's queue and running counts at scrape time."""
        self.queued.set_function(queued)
        self.running.set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
