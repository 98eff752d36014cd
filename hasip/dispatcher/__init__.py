"""The dispatcher: Asterisk node sets, selection, health and probes."""
