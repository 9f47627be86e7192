"""Calibration of the simulator's constants against measurements (see each module)."""
