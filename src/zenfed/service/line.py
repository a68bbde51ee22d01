"""One model line's parts in the deployment's coordinator: its engine, the journal that
writes its rounds and versions (rows naming the line), and its port."""

from __future__ import annotations

from dataclasses import dataclass

from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.port import CoordinatorPort
from zenfed.service.journal import StoreJournal


@dataclass(frozen=True)
class ServiceLine:
    """One model line's parts (see the module)."""

    name: str
    engine: Coordinator
    journal: StoreJournal
    port: CoordinatorPort
