"""Calibration of the simulator against measured cells: load cells (`cells`), compute the
metrics both sides share (`metrics`), fit a profile's constants (`fit`), read and write
profiles (`profile`), and report the simulator's accuracy on held-out cells (`accuracy`).
The DVFS constants (how power scales with the SM clock, where memory-bound steps slow) are
fitted to published measurements and the H100's telemetry in `dvfs` (evidence in
`dvfs_sources.yaml`); `sensitivity` reruns a grid's power-cap slice at their band edges."""
