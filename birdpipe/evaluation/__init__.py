"""Scores of trained models: every BirdCLEF metric, out-of-fold predictions, thresholds."""
