"""The `recal` command line: one module per command."""
