"""zenfed: federated LoRA fine-tuning of open LLMs.

    zenfed simulate --config examples/demo.toml

Data holders train a LoRA adapter of a shared base model on their own machines and send
back only the adapter update; a coordinator aggregates the updates into a new global
adapter, round after round. See README.md and ../shared/DESIGN.md for the map.
"""

from zenfed.errors import ZenfedError

__all__ = ["ZenfedError"]
__version__ = "0.1.0"
