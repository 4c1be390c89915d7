"""The shared test kit: `kit` (scenarios, produce/consume, map reads, worker config) and `fixtures` (the broker
choice, stacks, workers), imported by the integration and fault suites' conftest and test modules."""
