"""A participant process that sends 25x its honest update (a scaling attacker): the
ordinary ``zenfed join`` with a tamper hook, for the HTTP quarantine test.

    python -m tests.scaling_agent URL NAME IDENTITY TOKEN CATEGORY
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zenfed.deploy import join


def _scale(task: Any, delta: dict[str, Any], download: Any) -> dict[str, Any]:
    return {k: 25.0 * v for k, v in delta.items()}


if __name__ == "__main__":
    url, name, identity, token, category = sys.argv[1:6]
    join(url, name, Path(identity), token, chatterbot=category, tamper=_scale)
