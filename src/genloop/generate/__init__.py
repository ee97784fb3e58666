"""Language generation: the batching engine, sampling controls, stop strings, beam search."""

from genloop.generate.beam import beam_search
from genloop.generate.engine import Engine
from genloop.generate.greedy import TextStream, greedy_decode, greedy_seq2seq, stream_greedy
from genloop.generate.loading import DTYPES
from genloop.generate.request import Completion, Delta, RequestOutput
from genloop.generate.sampling import SampleOutput, Sampler, SamplingParams, make_generator
from genloop.generate.stop import StopMatcher

__all__ = [
    "DTYPES",
    "Completion",
    "Delta",
    "Engine",
    "RequestOutput",
    "SampleOutput",
    "Sampler",
    "SamplingParams",
    "StopMatcher",
    "TextStream",
    "beam_search",
    "greedy_decode",
    "greedy_seq2seq",
    "make_generator",
    "stream_greedy",
]
