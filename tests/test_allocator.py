"""Training keeps large freed blocks in malloc's heap (neurosim.training.allocator): set once
per process on glibc, left alone with NEUROSIM_MALLOC=system."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = ("from neurosim.training.allocator import keep_freed_blocks as k; "
         "print(k(), k())")


def _run(**env) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_thresholds_are_set_once_on_glibc():
    assert _run(NEUROSIM_MALLOC="") == "True True"


def test_system_allocator_when_asked():
    assert _run(NEUROSIM_MALLOC="system") == "False False"
