"""Side-by-side speed measurements; `python -m bench.run` runs them all (see README.md here)."""
