"""Serving traffic: arrivals, batching policies, measured load runs and the simulator (issue 26).

Importing the package loads no torch: spec, arrivals, policies and simulator are pure (numpy, pydantic), so the
config validates a `traffic` key and the report half runs the simulator; only load.py imports torch.
"""
