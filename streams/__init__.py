"""The I/O shell. Imports flow cli -> {dev, replay, dashboard} -> pipeline -> recalibrators, never back."""
