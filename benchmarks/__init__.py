"""Benchmark harnesses, run through `python launch/bench.py MODE`: kept out of the product packages.

Each mode measures one thing side by side in one run (ratios, not absolute times, are what
carry between machines); results go to docs/benchmarks.md next to the command that made them.
"""
