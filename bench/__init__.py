"""The benchmark harness: servicefactory measured next to its peers (run bench/run.py)."""
