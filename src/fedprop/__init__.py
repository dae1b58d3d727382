"""fedprop: federated propensity models and encrypted analytics for banks.

Importing fedprop switches off Flower's telemetry and update check before Flower
is imported anywhere in the process: a bank's node calls no outside host.
"""

from fedprop._offline import enforce_offline

enforce_offline()

__version__ = "0.1.0"

__all__ = ["__version__", "enforce_offline"]
