"""``python -m zenfed`` runs the CLI."""

from zenfed.cli import main

main()
