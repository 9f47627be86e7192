"""wattflow: performance-energy measurements of LLM inference in multi-request workflows."""

__version__ = "0.1.0"

# Bump deliberately when a change alters measured numbers (simulator physics, workload
# generators, metric definitions). It is part of every cell's params, so bumping it reruns
# every cell; ordinary library edits do not.
MODEL_VERSION = "3"
