"""The same workloads written for pipedsl, dask.delayed and peer frameworks.

Each module defines ``chain(n)``, ``fanout(n)`` and ``sleeps(count, seconds)``
and reads its cache location from ``BENCH_CACHE_DIR``; :mod:`run_one` imports
one module in a fresh interpreter and times it.
"""
