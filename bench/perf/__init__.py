"""Performance: model throughput (prefill, training, decode, cache), kernel and fused-loss benchmarks."""
