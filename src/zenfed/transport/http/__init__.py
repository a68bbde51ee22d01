"""The HTTP transport: the coordinator service (FastAPI) and, to come, the agent's client."""

from zenfed.transport.http.app import create_app

__all__ = ["create_app"]
