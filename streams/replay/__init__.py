"""Rebuilding calibrators from the topics for backfills (`recal replay`)."""
