"""A token-counting progress bar: tqdm when it is installed, otherwise a plain one on stderr."""

from __future__ import annotations

import sys
import time

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional
    tqdm = None


class ProgressBar:
    """``update(n_tokens)``, ``set_postfix(**fields)``, ``close()``; shows tokens/s and the postfix fields.

    Without tqdm it redraws one line with ``\\r`` on a terminal, and prints a line every 10% otherwise (so CI
    logs stay short).
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True):
        self.enabled = enabled
        self.total = max(int(total), 1)
        self.desc = desc
        self.count = 0
        self.postfix = ""
        self.start = time.time()
        self.last_draw = 0.0
        self.last_decile = -1
        self.bar = None
        if enabled and tqdm is not None:
            self.bar = tqdm(total=total, desc=desc, unit="tok", unit_scale=True, file=sys.stderr,
                            dynamic_ncols=True, leave=False, mininterval=0.5)

    def update(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            self._draw()

    def set_postfix(self, **fields) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)

    def _draw(self, final: bool = False) -> None:
        now = time.time()
        fraction = min(self.count / self.total, 1.0)
        tty = sys.stderr.isatty()
        decile = int(fraction * 10)
        if not final and (now - self.last_draw < 0.5 if tty else decile == self.last_decile):
            return
        self.last_draw, self.last_decile = now, decile
        rate = self.count / max(now - self.start, 1e-9)
        width = 24
        filled = int(fraction * width)
        line = (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
                f"{self.count:,}/{self.total:,} tok {rate:,.0f} tok/s {self.postfix}")
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._draw(final=True)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
