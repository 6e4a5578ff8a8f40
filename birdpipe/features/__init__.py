"""Features computed from audio: log-mel windows, noise reduction, and their Parquet cache."""
