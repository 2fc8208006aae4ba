"""What the experiment scripts share: their miniature config and their one-sentence refusals."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from launch.config import ConfigError, resolve
from launch.miniature import MiniatureConfig


def run_with_miniature_config(prog: str, args: argparse.Namespace,
                              body: Callable[[MiniatureConfig], int]) -> int:
    """``body(config)``'s exit code, the config being the miniature preset ``args.preset`` with the command line's
    ``args.overrides``; an unknown preset, a bad override or a ConfigError from the body (a bad option) is one
    sentence on stderr (``prog: ...``) and exit code 2."""
    try:
        return body(resolve(args.preset, args.overrides, kind=MiniatureConfig))
    except ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
