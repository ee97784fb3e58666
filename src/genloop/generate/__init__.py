"""Language generation: decoding loops over the model library (the batching engine comes later)."""

from genloop.generate.greedy import greedy_decode, greedy_seq2seq

__all__ = ["greedy_decode", "greedy_seq2seq"]
