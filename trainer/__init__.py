"""The RL trainer. Runs on its own: `python -m trainer --config FILE --run-dir DIR`."""
