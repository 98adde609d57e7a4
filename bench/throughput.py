"""`python -m bench.throughput`: prefill, training and decode speed, cache size, memory
(the code lives in `bench.perf.throughput`)."""
from bench.perf.throughput import main

if __name__ == "__main__":
    raise SystemExit(main())
