"""`python -m bench.evaluate`: downstream scores of a model and its teacher (the code lives in `bench.evaluation.cli`)."""
from bench.evaluation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
