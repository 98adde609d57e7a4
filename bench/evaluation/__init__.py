"""Evaluation: mask-free batched scoring, the tasks (perplexity, recall, cloze, lm-eval) with their per-item
results, score families and % of the teacher recovered with intervals (`recovery`), and the teacher's scores
cached per evaluation config."""
