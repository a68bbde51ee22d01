"""Persistence: run checkpoints (the SQL store and blob store come with deployment)."""

from zenfed.store.checkpoint import atomic_write, load_checkpoint, save_checkpoint

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]
