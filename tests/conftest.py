import os

# Charts render headless in tests and CI.
os.environ.setdefault("MPLBACKEND", "Agg")
