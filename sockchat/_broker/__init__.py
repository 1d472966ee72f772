"""The broker: instances, operators, workers and pairs across processes."""
