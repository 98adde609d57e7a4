"""Everything that runs: benchmarks, data, stages, evaluation, leaderboard, figures."""
