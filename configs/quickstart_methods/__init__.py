"""Per-method settings of the quick start: `configs/quickstart.py:method=<name>` applies `<name>.py`'s `apply`."""
