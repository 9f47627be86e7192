"""The workflow patterns, one module each (defining `PATTERNS`): see wattflow.workloads.pattern."""
