"""Nets used from several Python threads at once."""

import os
import subprocess
import sys
import textwrap

# Runs in a child process, so that a crash fails the test instead of
# killing pytest.
DESTROY_DURING_FORWARD = textwrap.dedent(
    """
    import threading
    import time

    import numpy as np

    from mochac import (
        CPUBackend,
        InnerProductLayer,
        MemoryDataLayer,
        MochacError,
        Net,
        SoftmaxLossLayer,
    )

    rng = np.random.default_rng(0)
    x = rng.random((64, 16)).astype(np.float32)
    y = rng.integers(0, 3, (64, 1)).astype(np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=64, data=[x, y]),
        InnerProductLayer(name="ip1", output_dim=512, bottoms=["data"], tops=["ip1"]),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["ip1"], tops=["ip2"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
    ]
    net = Net("threads", CPUBackend(threads=1), layers)
    errors = []
    started = threading.Event()

    def run_forward():
        try:
            for _ in range(100000):
                net.forward()
                net.backward()
                started.set()
        except MochacError as error:
            errors.append(str(error))

    worker = threading.Thread(target=run_forward)
    worker.start()
    started.wait()
    time.sleep(0.05)
    net.destroy()
    worker.join()
    print(errors)
    """
)


def test_destroy_during_forward_in_thread():
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", DESTROY_DURING_FORWARD],
            capture_output=True,
            check=False,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "was destroyed" in result.stdout
