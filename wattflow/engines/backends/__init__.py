"""Engine backends, one module each (each defines `BACKEND`, a Backend instance)."""
