"""Language generation: decoding loops over the model library (the batching engine comes later)."""

from genloop.generate.greedy import TextStream, greedy_decode, greedy_seq2seq, stream_greedy

__all__ = ["TextStream", "greedy_decode", "greedy_seq2seq", "stream_greedy"]
