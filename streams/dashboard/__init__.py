"""The calibration dashboard: pages and plots over the maps in Redis."""
