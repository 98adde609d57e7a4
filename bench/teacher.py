"""`python -m bench.teacher`: pretrain the embedded teacher (the code lives in `bench.data.teacher`)."""
from bench.data.teacher import main

if __name__ == "__main__":
    raise SystemExit(main())
