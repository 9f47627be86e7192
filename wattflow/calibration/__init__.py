"""Calibration of the simulator against measured cells: load cells (`cells`), compute the
metrics both sides share (`metrics`), fit a profile's constants (`fit`), read and write
profiles (`profile`), and report the simulator's accuracy on held-out cells (`accuracy`)."""
