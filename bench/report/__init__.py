"""Reporting from `results/` only: the leaderboard CSV and the figures. Nothing here runs a model."""
