"""The protocol layer: HTTP semantics of Durable Streams on top of the storage engine."""
