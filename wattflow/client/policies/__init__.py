"""Release policies, one module each (each defines `POLICY`, a ReleasePolicy subclass)."""
