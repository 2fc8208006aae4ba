"""What the experiment scripts share: the miniature config a command line asks for."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from launch.config import ConfigError, resolve
from launch.miniature import MiniatureConfig


def miniature_config(prog: str, preset: str, overrides: Sequence[str]) -> Optional[MiniatureConfig]:
    """The miniature preset with the command line's ``key=value`` overrides; None after one sentence on stderr
    (``prog: ...``) for an unknown preset or a bad override."""
    try:
        return resolve(preset, overrides, kind=MiniatureConfig)
    except ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return None
