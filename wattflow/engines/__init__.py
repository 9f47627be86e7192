"""Engines: the seam (`base`), the backends (`backends/`, by kind in `registry`), the
simulator (`sim/`), the OpenAI-compatible client and the server pool."""
