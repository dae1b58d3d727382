"""A real deployment: Flower's SuperLink at the coordinator, one SuperNode per institution.

``coordinator`` starts and drives the SuperLink (TLS, node authentication, a persistent
state database), ``node`` starts a partner's SuperNode after checking its set-up, and
``supernode`` is the SuperNode entry point with fedprop's shorter idle poll.
"""

from fedprop.deploy.coordinator import (
    CONNECTION_NAME,
    CoordinatorSetup,
    RunOutcome,
    check_coordinator,
    register_node,
    start_coordinator,
    submit_job,
    superlink_command,
    write_connection,
)
from fedprop.deploy.node import (
    NODE_AUTH_KEY,
    NODE_AUTH_PUBLIC,
    NodeLaunch,
    check_launch,
    make_node_auth_key,
    start_node,
    supernode_command,
)

__all__ = [
    "CONNECTION_NAME",
    "NODE_AUTH_KEY",
    "NODE_AUTH_PUBLIC",
    "CoordinatorSetup",
    "NodeLaunch",
    "RunOutcome",
    "check_coordinator",
    "check_launch",
    "make_node_auth_key",
    "register_node",
    "start_coordinator",
    "start_node",
    "submit_job",
    "superlink_command",
    "supernode_command",
    "write_connection",
]
