"""The dispatcher: Asterisk node sets, selection, health (issue 4; the sans-IO core so far)."""
