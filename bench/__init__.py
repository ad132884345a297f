"""Benchmarks. Each is a package `bench/<name>/` runnable as `python -m bench.<name>`: it prints a table of ratios
against a baseline measured in the same run and writes its figures to `bench/results/<name>.json`."""
