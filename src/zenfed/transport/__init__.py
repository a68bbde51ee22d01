"""Transports carry the port's messages: in memory (simulation) or over HTTP (deployment)."""

from zenfed.transport.inmemory import InMemoryTransport

__all__ = ["InMemoryTransport"]
