"""Recordings and their labels: metadata, audio decoding, the manifest, folds, synthetic data."""
