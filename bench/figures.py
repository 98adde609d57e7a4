"""`python -m bench.figures`: redraw results/figures/ from local results (the code lives in `bench.report.figures`)."""
from bench.report.figures import main

if __name__ == "__main__":
    raise SystemExit(main())
