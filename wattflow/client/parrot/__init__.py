"""Parrot (OSDI'24, microsoft/ParrotServe) in front of an OpenAI-compatible inference server.

* `env`: Parrot's source (upstream commit 2e1825e) and a virtual environment of its own, so
  its pins never enter wattflow's environment;
* `launch`: Parrot's serving core and one `openai` engine process on loopback;
* `proxy`: the recording endpoint between Parrot's engine and the inference server;
* `client`: `run_parrot`, which submits workflows as semantic functions and returns records.

See docs/parrot.md for the design and for every upstream defect worked around.
"""
