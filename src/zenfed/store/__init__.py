"""Persistence: run checkpoints (simulation), one byte format for saved states
(``records``), and for the coordinator service a content-addressed blob store (``blobs``)
and a SQLAlchemy database with Alembic migrations (``db``). Nothing here knows the
coordinator or the participant: they hand it bytes and rows."""

from zenfed.store.checkpoint import atomic_write, load_checkpoint, save_checkpoint

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]
