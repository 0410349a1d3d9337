"""Benchmarks of connector-runtime against raw Ray (the limit) and DBOS (a peer).

`python -m benchmarks` runs every case, prints a table and writes benchmarks/RESULTS.md;
`python -m benchmarks --quick` is the smoke test's mode. See benchmarks/README.md.
"""
