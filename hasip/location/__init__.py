"""Location service: bindings in memory, the registrar, and the durable store."""
