"""Flower's SuperNode with a shorter idle poll: ``python -m fedprop.deploy.supernode``.

Flower 1.41's SuperNode asks the SuperLink for work, and when there is none it sleeps
3 s before asking again; it checks for the ClientApp's reply every 0.5 s. A protocol
step is one such exchange, so each step waits up to 3.5 s on these timers alone, far
longer than the work of a logistic-regression round. The SuperNode has no option for
them (they are literals in ``flwr.supernode.start_client_internal``), so this entry
point caps every sleep of that module (and only of that module) at the node's poll
interval before handing over to ``flower-supernode`` unchanged. Nothing else of the
SuperNode is touched: same arguments, same TLS, same authentication.

A shorter poll costs one small HTTPS request per interval per idle node at the
SuperLink: at the default of 0.25 s, four requests a second per node.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from collections.abc import Sequence
from typing import Final

from fedprop._offline import enforce_offline

__all__ = ["PollClock", "main", "shorten_idle_polls"]

#: The shortest poll interval accepted: below it, idle nodes mostly generate load.
MIN_POLL_INTERVAL: Final = 0.05


class PollClock(types.SimpleNamespace):
    """Stands in for the ``time`` module inside Flower's SuperNode loop: every attribute
    is the real module's, except that ``sleep`` never waits longer than ``interval``."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, but at most the poll interval."""
        time.sleep(min(seconds, self.interval))


def shorten_idle_polls(interval: float) -> None:
    """Cap the SuperNode loop's sleeps at ``interval`` seconds (this process only)."""
    if not (math.isfinite(interval) and interval >= MIN_POLL_INTERVAL):
        raise ValueError(f"poll interval must be at least {MIN_POLL_INTERVAL} s, got {interval}")
    from flwr.supernode import start_client_internal

    current = getattr(start_client_internal, "time", None)
    if current is not time and not isinstance(current, PollClock):
        raise RuntimeError("this Flower version's SuperNode loop does not use time.sleep")
    setattr(start_client_internal, "time", PollClock(interval))  # noqa: B010


def main(argv: Sequence[str] | None = None) -> None:
    """``--poll-interval SECONDS`` then every ``flower-supernode`` argument."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-interval", type=float, required=True)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    enforce_offline()
    shorten_idle_polls(args.poll_interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
