"""``certify.retain_freed_memory``: after it, a loop that allocates and frees buffers of a few MB
(CROWN's backward pass) stops faulting fresh pages in; outside glibc it reports False. Run in
subprocesses: it changes the allocator of the whole process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

import certify

CHURN = """
import json, resource, sys
import torch
import certify
torch.set_num_threads(1)
retained = certify.retain_freed_memory() if sys.argv[1] == "1" else None
# coefficient chunks of CROWN's backward pass: rows of a 512- and a 128-wide layer
xs = [torch.randn(*s) for s in [(2, 1024, 512), (2, 1024, 128), (8, 256, 128), (8, 256, 512)]]
def step():  # per chunk: three live buffers (one elementwise backward step), then freed
    for a in xs:
        n = a.clamp(max=0)
        (n * 2.0 + a * 3.0).sum()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"retained": retained, "faults": faults}))
"""


def _faults(retain: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHURN, "1" if retain else "0"], check=True,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt only")  # fmt: skip
def test_freed_buffers_stay_in_the_process():
    plain, kept = _faults(False), _faults(True)
    assert kept["retained"] is True
    # 30 steps over 4 chunks of 1-4 MB: a fault per 4 KB page when the memory goes back to
    # the kernel (~100,000 measured without it), none when it stays
    assert kept["faults"] < 2_000, (plain, kept)


def test_bad_argument():
    with pytest.raises(ValueError, match="keep_mb"):
        certify.retain_freed_memory(0)
