"""`one_torch_thread()`: torch on one intra-op thread inside the block.

Much of the workbench's work is many small and middling tensor ops (probe fitting, single frames in the dashboard,
small batches from several request threads). On 2 CPU cores a second intra-op thread gains them little (the big
products ~1.5x), and when another process keeps a core busy every op waits for the descheduled thread: measured,
the probe tests took 350 s instead of 10, and a dashboard episode 1.7 s instead of 53 ms
(2-30x was measured on small kernels before).
One thread is the robust default; run several jobs side by side to use more cores.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
