"""Transports move tasks and updates: in-memory (simulation); HTTP comes with deployment."""

from zenfed.transport.inmemory import InMemoryTransport

__all__ = ["InMemoryTransport"]
