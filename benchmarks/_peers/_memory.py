"""Peak resident memory of one call, for JAX, PyTorch, NumPy and C++ peers alike.

A background thread reads `/proc/self/statm` every `interval` seconds while
the call runs; the result is the peak RSS minus the RSS just before the call.
`peers.py` re-executes itself with `MALLOC_MMAP_THRESHOLD_` fixed at 1 MiB so
that glibc returns every large freed buffer to the system (otherwise buffers
below its dynamic threshold, up to 32 MiB, stay resident and later calls would
look cheaper). Spikes shorter than `interval` can be missed.
"""

import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (monotone) peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """`with PeakRSS() as p: fn()`, then `p.delta_mb` (peak minus start, MB)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta_mb = (self.peak - self.base) / 1e6
        return False
