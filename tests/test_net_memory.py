"""Nets whose memory cannot be allocated."""

import os
import resource
import subprocess
import sys
import textwrap

# Runs in a child process whose address space is capped below the net's
# 3.2 GiB of blobs and parameters.
BUILD_HUGE_NET = textwrap.dedent(
    """
    import numpy as np

    from mochac import (
        CPUBackend,
        InnerProductLayer,
        MemoryDataLayer,
        Net,
        SoftmaxLossLayer,
    )

    x = np.zeros((4, 1000), np.float32)
    y = np.zeros((4, 1), np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=20000, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=20000, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    try:
        Net("huge", CPUBackend(threads=1), layers)
    except MemoryError as error:
        print(type(error).__name__, error)
    """
)
ADDRESS_SPACE_LIMIT = 2 * 2**30


def limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def test_net_too_large_to_allocate():
    result = subprocess.run(
        [sys.executable, "-c", BUILD_HUGE_NET],
        capture_output=True,
        check=False,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"),
        preexec_fn=limit_address_space,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("AllocationError "), result.stdout
    assert "net 'huge': cannot allocate" in result.stdout
    assert "GiB" in result.stdout
