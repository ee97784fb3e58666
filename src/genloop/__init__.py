"""genloop: own a generative language model end to end."""

__version__ = "0.1.0"
