"""Hyperparameter sweeps: search spaces, the sweep spec, and the tuner (Optuna underneath)."""
