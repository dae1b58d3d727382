"""Keep the process from calling outside hosts (Flower telemetry, update checks)."""

from __future__ import annotations

import os

#: Environment switches that Flower reads; each must hold the value given here.
OFFLINE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def enforce_offline() -> None:
    """Set Flower's telemetry and update-check switches off in this process.

    The values are forced, not defaulted: an operator's shell that enables
    telemetry does not re-enable it for a fedprop node.
    """
    os.environ.update(OFFLINE_ENV)
