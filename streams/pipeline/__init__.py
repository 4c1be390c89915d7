"""The production stream worker: decode, join, calibrate partials, aggregate, publish."""
