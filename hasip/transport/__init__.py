"""The asyncio shell around the protocol layer: UDP and TCP listeners and
connections. Transports deliver bytes to a sink and send bytes; they never
parse more than a stream framer needs."""
