"""The Ray engine: the same stages on Ray Data, for when one machine is not enough."""
