"""`python -m bench.leaderboard`: rebuild results/leaderboard.csv from the run records
(the code lives in `bench.report.leaderboard`)."""
from bench.report.leaderboard import main

if __name__ == "__main__":
    raise SystemExit(main())
