# Benchmarks: `make bench` (python -m bench) runs them all; each prints numbers and never asserts timings.
