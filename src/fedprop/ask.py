"""``fedprop query``: ask the demo's four banks an aggregate question, on this machine.

The query runs over Flower's Simulation Engine exactly as on a deployed federation: the
coordinator signs the query; every bank's node checks the signature, its own privacy
policy and its budget ledger before it reads a row, computes its cells, encrypts them;
the coordinator adds ciphertexts; the releasing bank suppresses small cells, adds noise
and signs the answer. The answer is printed as a table (with each value's noise scale)
and written as ``answer.json`` and ``answer.csv``.

Each bank's node gets the policy :func:`demo_policy` writes (once; edit it to see queries
refused), its ledger and its privacy log in the local federation's folder, next to the
demo's. A deployed coordinator asks the same with ``fedprop coordinator submit
--query``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from fedprop.apps.server_app import write_answer
from fedprop.apps.simulation import simulate_query
from fedprop.demo import ensure_split
from fedprop.federation import local_federation
from fedprop.protocols.analytics import QueryOutcome, QuerySpec, answer_frame

__all__ = ["QueryRun", "demo_policy", "run_local_query"]

#: The demo banks' privacy budget per coordinator and 30 days, and per query.
DEMO_BUDGET_EPSILON = 3.0
DEMO_BUDGET_DELTA = 1e-6
DEMO_MAX_QUERY_EPSILON = 1.0
DEMO_MAX_QUERY_DELTA = 1e-7


def demo_policy(federation: str, coordinator: str) -> str:
    """The demo banks' policy (TOML): queries and training from ``coordinator`` only,
    categories as group-by keys, take-up and call counts as targets, k = 10."""
    return f"""# Privacy policy of a demo bank (see node/policy.example.toml for every key).
[federations.{federation}]
coordinators = ["{coordinator}"]

[jobs]
types = ["hfl-train", "query"]
aggregation = ["paillier"]
min-key-bits = 2048

[release]
min-cohort = 10
model = true

[dp]
period = "30d"
epsilon = {DEMO_BUDGET_EPSILON}
delta = {DEMO_BUDGET_DELTA}
max-query-epsilon = {DEMO_MAX_QUERY_EPSILON}
max-query-delta = {DEMO_MAX_QUERY_DELTA}

[datasets.bank-marketing]
features = [
    "age", "job", "marital", "education", "default", "balance", "housing", "loan",
    "contact", "day", "month", "campaign", "pdays", "previous", "poutcome",
]
group-by = ["job", "marital", "education", "housing", "loan", "contact", "month", "poutcome"]
targets = ["y", "campaign", "previous"]
forbidden = ["cid", "duration"]
"""


@dataclass(frozen=True)
class QueryRun:
    """A local query's answer and where it was written."""

    outcome: QueryOutcome
    json_path: Path
    csv_path: Path


def run_local_query(
    query_path: Path, source: Path, data_dir: Path, out_dir: Path, console: Console | None = None
) -> QueryRun:
    """Run the query at ``query_path`` over the demo banks; print and write the answer."""
    console = console or Console()
    text = query_path.read_text(encoding="utf-8")
    query = QuerySpec.from_toml(text, str(query_path))
    dirs = ensure_split(source, data_dir, query.parties, console)
    federation = local_federation(data_dir.parent / "federation", "demo", query.parties)
    manifest = federation.manifest()
    assert manifest.coordinator is not None  # a local federation always lists one
    policies = {}
    for party in query.parties:
        path = federation.audit_dir.parent / "policies" / f"{party}.toml"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(demo_policy("demo", manifest.coordinator.fingerprint()))
        policies[party] = path
    nodes = federation.node_configs(dirs, policies=policies)
    with console.status(f"query [bold]{query.id}[/] over {len(query.parties)} banks"):
        outcome = simulate_query(text, nodes, manifest, federation.coordinator())
    json_path, csv_path = write_answer(outcome, out_dir)
    _print_answer(outcome, console)
    console.print(f"Answer: {csv_path} and {json_path} ({outcome.seconds:.1f} s)")
    return QueryRun(outcome, json_path, csv_path)


def _show(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_answer(outcome: QueryOutcome, console: Console) -> None:
    a = outcome.answer
    frame = answer_frame(a)
    title = (
        f"{a.query_id}: epsilon {a.epsilon}, delta {a.delta}, k {a.k} "
        f"({'noised, ' + a.mechanism if a.noised else 'NOT noised'}); "
        f"{int(frame['suppressed'].sum())} of {len(frame)} cells suppressed"
    )
    # On screen: values and their noise scales (standard errors are in the files).
    shown = frame[[c for c in frame.columns if not str(c).endswith("std_error")]]
    table = Table(
        title=title,
        caption="b: scale of the discrete Laplace noise on each count "
        "(a rate is noised positives over noised count)",
    )
    for column in shown.columns:
        header = str(column).replace(" noise_b", " b")
        table.add_column(header, justify="left" if column in a.group_by else "right")
    for row in shown.itertuples(index=False):
        table.add_row(*(_show(v) for v in row))
    console.print(table)
