"""Evaluation: mask-free batched scoring, the tasks (perplexity, recall, cloze, lm-eval), recovery vs the teacher."""
