"""`python -m bench.sweep`: a grid of runs, resumable and shardable (the code lives in `bench.distill.sweep`)."""
from bench.distill.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
