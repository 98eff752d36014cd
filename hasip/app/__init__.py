"""The node as a program: configuration, wiring, life cycle, control API."""
