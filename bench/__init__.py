"""Caliber's benchmark suite: ``python -m bench.run [--quick]`` (see BENCHMARKS.md).

Not part of the test run (``tests/test_bench_quick.py`` only runs the quick mode once, to
make sure the benchmarks still work, and asserts no timings).
"""
