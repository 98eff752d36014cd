"""Defences of a node that faces untrusted networks, sans-IO: the tokens
that prove an in-dialog request follows a route set we recorded
(:mod:`routetoken`), per-source rates and bans (:mod:`guard`), and the
failed-authentication counters that feed them (:mod:`authfail`)."""
