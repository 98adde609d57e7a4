"""Everything that runs, by role (imports point down to `students/` and `kernels/`, never up):

- `bench.data`: the embedded corpus, recall documents, token blocks and batches, the embedded teacher;
- `bench.distill`: losses, stages, the training loop, one run, sweeps;
- `bench.evaluation`: scoring primitives, tasks (perplexity, recall, cloze, lm-eval), recovery, the CLI;
- `bench.perf`: throughput, kernel and loss benchmarks, timing helpers;
- `bench.report`: the leaderboard and figures, drawn from `results/` only.

The modules at this level are the commands (`python -m bench.run`, `bench.sweep`, `bench.evaluate`,
`bench.throughput`, `bench.leaderboard`, `bench.figures`, `bench.teacher`) and what every role shares:
`errors` (one `error:` line, exit code 2), `files` (atomic writes, locks), `provenance` (machine, commit).
"""
