"""Message types of the federation protocol."""

from zenfed.protocol.messages import EvalReport, GlobalVersion, Task, Tensors, Update, tensors_hash

__all__ = ["EvalReport", "GlobalVersion", "Task", "Tensors", "Update", "tensors_hash"]
