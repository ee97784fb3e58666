"""Serving: the OpenAI-compatible HTTP API, the web chat page, and the conversation & feedback store.

Kept import-free on purpose: `genloop feedback` and the server import only the parts they use, so
loading this package never pulls in FastAPI, SQLAlchemy or torch.
"""
