"""Closing the loop: train a model on a run's data (train), then judge it the GLAN way (eval)."""
