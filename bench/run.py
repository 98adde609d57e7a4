"""`python -m bench.run`: one distillation run, teacher to leaderboard row (the code lives in `bench.distill.run`)."""
from bench.distill.run import main

if __name__ == "__main__":
    raise SystemExit(main())
