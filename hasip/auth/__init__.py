"""Digest authentication: nonces, credentials, and where passwords come from."""
