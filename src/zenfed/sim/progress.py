"""Rich progress bars for a simulation: one for rounds, one for the current phase.

progress = Progress(enabled=True)   # Progress(enabled=False) prints nothing
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Round and phase bars; a round's key metrics are printed when it ends."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console()
        self._bars: RichProgress | None = None
        self._rounds: Any = None
        self._phase: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bars = RichProgress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None

    def start_rounds(self, total: int, done: int) -> None:
        """Show the rounds bar (``done`` rounds already finished, e.g. after resume)."""
        if self._bars is not None:
            self._rounds = self._bars.add_task("rounds", total=total, completed=done)

    def start_phase(self, description: str, total: int) -> None:
        """Start (or restart) the per-participant bar of the current phase."""
        if self._bars is None:
            return
        if self._phase is None:
            self._phase = self._bars.add_task(description, total=total)
        else:
            self._bars.reset(self._phase, total=total, description=description)

    def advance_phase(self, _participant: str = "") -> None:
        """One participant finished its task."""
        if self._bars is not None and self._phase is not None:
            self._bars.advance(self._phase)

    def round_done(self, row: dict[str, Any]) -> None:
        """Advance the rounds bar and print the round's losses."""
        if self._bars is None:
            return
        self._bars.advance(self._rounds)
        union = row.get("union_loss")
        held = f"  held-out (union) {union:.4f}" if union is not None else ""
        eps = f"  epsilon {row['epsilon']:.3f}" if "epsilon" in row else ""
        if "aborted" in row:
            self.console.print(f"round {row['round']}: [yellow]aborted[/] ({row['aborted']})")
            return
        self.console.print(f"round {row['round']}: train loss {row['train_loss']:.4f}{held}{eps}")
        for name, error in row.get("failures", {}).items():
            self.console.print(f"  [yellow]{name} failed:[/] {error}", highlight=False)

    def note(self, text: str) -> None:
        """A line of progress text."""
        if self.enabled:
            self.console.print(text)
