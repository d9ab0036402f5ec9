"""Places a batch cell can run: one protocol (base.py), one module per place."""
