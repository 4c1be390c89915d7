"""The I/O shell: Faust app, the join worker, the Redis publisher, the CLI and the dev stack."""
