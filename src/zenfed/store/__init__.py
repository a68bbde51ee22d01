"""Persistence: run checkpoints (simulation), and for the coordinator service a
content-addressed blob store (``blobs``) and a SQLAlchemy database with Alembic
migrations (``db``)."""

from zenfed.store.checkpoint import atomic_write, load_checkpoint, save_checkpoint

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]
