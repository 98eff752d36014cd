"""Durable storage helpers shared by the stores."""
