"""The benchmark: how fast the bridge is, how close to Directus's own limit, how cost grows.

`make bench` (`python -m bench`) starts the local stack (a fresh Directus on SQLite, the bridge
under gunicorn with its production settings, the worker, the RideNDine sandbox, a counting SMTP
sink), runs the scenarios of docs/performance.md, prints a table with every target's pass/fail
and writes the figures to bench/results/<timestamp>.json. `--quick` is the small run that
tests/system/test_bench_quick.py runs so that this code cannot rot. Not part of the installed
package.
"""
