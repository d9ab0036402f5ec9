"""puffctl: an experiment orchestrator for RL research on a handful of GPU boxes."""

__version__ = "0.1.0"
