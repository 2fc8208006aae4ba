"""Transparent huge pages for XLA's CPU buffers: the `memgen` command re-executes itself once with glibc's malloc
told to request them.

Why: XLA's CPU runtime allocates an executable's temporary buffer afresh with malloc on every call. A buffer
that large (548 MB for the small preset's SFT step with an image) is beyond glibc's mmap threshold, so each call
maps new memory, page-faults all of it in 4 KiB pages (135,000 faults a step) and unmaps it afterwards; on a KVM
guest that was a quarter of the step (docs/benchmarks.md, "SFT train step"). With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc marks its mappings MADV_HUGEPAGE, and a kernel
whose transparent-huge-page mode is ``madvise`` then backs them with 2 MiB pages: 512x fewer faults and TLB
entries. glibc reads its tunables only when a process starts, hence the re-exec, done before anything is
imported or computed.

Nothing happens when the setting cannot matter (not Linux with glibc >= 2.35, or THP mode ``always`` or
``never``) or when the user already chose (``glibc.malloc.hugetlb`` present in GLIBC_TUNABLES; ``=0`` opts out).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on when it is glibc, else None."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (the bracketed word of ``always [madvise] never``), or None."""
    try:
        with open(path, encoding="ascii") as handle:
            match = re.search(r"\[(\w+)\]", handle.read())
    except OSError:
        return None
    return match.group(1) if match else None


def tuned_environment(environ: Mapping[str, str], libc: tuple[int, int] | None, mode: str | None
                      ) -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to gain or the user already chose."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if libc is None or libc < (2, 35) or mode != "madvise" or TUNABLE in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command line with malloc's huge pages on, when that changes anything.

    Call it first thing in a program's entry point (never from library code or under a test runner: the
    process is replaced). `sys.orig_argv` keeps the interpreter's own options and ``-m``."""
    if not sys.platform.startswith("linux"):
        return
    env = tuned_environment(os.environ, glibc_version(), thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def huge_pages_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether malloc's large buffers get transparent huge pages in this process (for benchmark records)."""
    mode = thp_mode()
    return mode == "always" or (mode == "madvise" and f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "").split(":"))
