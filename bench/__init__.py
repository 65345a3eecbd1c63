"""Benchmarks: every figure is printed beside a baseline measured in the same run.

Each ``bench/bench_*.py`` module exposes ``run(quick: bool) -> list[Row]``. ``python -m bench``
runs them all (or those named on the command line) and prints one table; ``docs/BENCHMARKS.md``
records a run. This machine is noisy: figures are medians over repeats, and ratios matter more
than absolute numbers.
"""
