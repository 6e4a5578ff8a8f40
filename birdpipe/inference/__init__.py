"""Trained models on new audio: fold ensembles, soundscape predictions, submission formats."""
