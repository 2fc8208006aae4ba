"""launch.hugepages: when the `memgen` entry point re-executes with malloc's huge pages (only glibc >= 2.35 under
THP mode "madvise", never over the user's own choice), that the re-executed process keeps its command line, and
that the setting does what it is for: an XLA program's temporary buffer no longer page-faults in 4 KiB pages."""

import os
import subprocess
import sys

import pytest

from launch import hugepages
from launch.hugepages import tuned_environment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAN_REEXEC = (sys.platform.startswith("linux") and (hugepages.glibc_version() or (0, 0)) >= (2, 35)
              and hugepages.thp_mode() == "madvise")


def test_tuned_environment_only_where_it_matters():
    on = tuned_environment({"A": "1"}, (2, 36), "madvise")
    assert on == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise")["GLIBC_TUNABLES"] \
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert tuned_environment({}, (2, 34), "madvise") is None  # the tunable does not exist before 2.35
    assert tuned_environment({}, None, "madvise") is None  # not glibc (musl, macOS)
    assert tuned_environment({}, (2, 36), "always") is None  # every mapping gets huge pages already
    assert tuned_environment({}, (2, 36), "never") is None and tuned_environment({}, (2, 36), None) is None
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise") is None  # opted out
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), "madvise") is None  # done


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(str(path)) == "always"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = REPO
    return env


@pytest.mark.skipif(not CAN_REEXEC, reason="needs Linux, glibc >= 2.35 and THP mode 'madvise'")
def test_reexec_keeps_the_command_line_and_runs_the_program_once(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("import os, sys\nfrom launch.hugepages import reexec_with_huge_pages\n"
                      "print('start', flush=True)\nreexec_with_huge_pages()\n"
                      "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-X", "utf8", str(script), "a", "--b=c"], env=_clean_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    # the first process printed "start" and was replaced; the second printed it again, then ran to the end
    assert out == ["start", "start", "glibc.malloc.hugetlb=1 ['a', '--b=c']"]
    opted_out = subprocess.run([sys.executable, str(script)], env={**_clean_env(), "GLIBC_TUNABLES":
                                                                   "glibc.malloc.hugetlb=0"},
                               capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert opted_out == ["start", "glibc.malloc.hugetlb=0 []"]


FAULTS = """
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x, y: (x @ y).T @ x)  # (4096, 4096) f32 = 64 MiB temporary: 16,384 pages of 4 KiB
x, y = jnp.ones((4096, 32)), jnp.ones((32, 4096))
f(x, y).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x, y).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


@pytest.mark.skipif(not CAN_REEXEC, reason="needs Linux, glibc >= 2.35 and THP mode 'madvise'")
def test_huge_pages_remove_the_temporary_buffers_page_faults():
    def faults(extra: dict[str, str]) -> float:
        env = {**_clean_env(), "JAX_PLATFORMS": "cpu", **extra}
        return float(subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True,
                                    timeout=120, check=True).stdout.split()[-1])

    plain = faults({})
    huge = faults({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert plain > 8_000  # the 64 MiB buffer is mapped afresh and faulted in page by page on every call
    assert huge < plain / 4
