"""``fedprop demo --vertical`` and ``fedprop score``: a bank and a partner on this machine.

The bank (the guest, with the labels) and a partner (the host, with other columns of the
same customers) train one propensity model through Flower's Simulation Engine exactly as
on a deployed federation: each party's node reads only its own folder and checks every
message against its own privacy policy; they align their customers by private set
intersection, train Hardy et al.'s logistic regression with the coordinator as the
Paillier arbiter, and the bank releases only AUC, KS and lift. Each party keeps its part
of the model. ``fedprop score`` then has them score the bank's customers jointly: the
ranked target list is written at the bank, and the coordinator learns two counts.

Everything lives under one folder (default ``runs/vertical``): ``data/`` (each party's
``data.csv``, prepared once from the public files), ``federation/`` (keys, manifest,
privacy logs, policies), ``jobs/`` (each party's state, model and output folders) and
the coordinator's ``result.json`` of each job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedprop.apps.audit import verify_logs
from fedprop.apps.client_app import NodeConfig
from fedprop.apps.server_app import write_vertical_result
from fedprop.apps.simulation import simulate_vertical
from fedprop.data.split import ID_COLUMN
from fedprop.data.vertical import LAYOUTS, VERTICAL_FILE, prepare_vertical
from fedprop.errors import FedpropError, JobFailedError
from fedprop.federation import LocalFederation, local_federation
from fedprop.protocols.vertical import (
    EpochStats,
    ModelPart,
    ScoreResult,
    ScoreSpec,
    VerticalResult,
    VerticalSpec,
)

__all__ = ["DEMO_FEDERATION", "VerticalRun", "run_local_score", "run_vertical_demo"]

#: The local vertical federation's name.
DEMO_FEDERATION = "vertical-demo"
#: Seed of the demo's data preparation (the host's dropped customers, row orders).
DATA_SEED = 20240501
#: Smallest intersection the demo's scoring job accepts.
SCORE_MIN_INTERSECTION = 1000
#: Rows of the target list shown on screen.
SHOWN_ROWS = 5

_JOB_ID = re.compile(r'^(id\s*=\s*")([^"]+)(")', re.MULTILINE)


@dataclass(frozen=True)
class VerticalRun:
    """A local vertical job: what the coordinator holds, and where it wrote it."""

    result: VerticalResult | ScoreResult
    result_path: Path
    target_list: Path | None = None


def _layout(spec: VerticalSpec) -> str:
    """The example federation whose data fits ``spec``: bank-full's customers are named
    by their row (``cid``), FATE's default-credit ones by ``id``."""
    return "bank-marketing" if spec.parties[spec.guest].id_column == ID_COLUMN else "default-credit"


def _federation(root: Path, members: tuple[str, ...]) -> LocalFederation:
    return local_federation(root / "federation", DEMO_FEDERATION, members)


def demo_policy(fingerprint: str, spec: VerticalSpec, party: str) -> str:
    """A demo party's policy (TOML): vertical training and scoring from the coordinator
    ``fingerprint`` only, paillier at 2048 bits or more, on its dataset's columns in the
    spec's roles."""
    own = spec.parties[party]
    features = ", ".join(f'"{c.name}"' for c in own.columns)
    targets = f'"{own.label}"' if own.label else ""
    return f"""# Privacy policy of a demo party (see node/policy.example.toml for every key).
[federations.{DEMO_FEDERATION}]
coordinators = ["{fingerprint}"]

[jobs]
types = ["vfl-train", "score"]
aggregation = ["paillier"]
min-key-bits = 2048

[release]
min-cohort = 10
model = false

[datasets.{own.dataset}]
features = [{features}]
targets = [{targets}]
"""


def _nodes(
    root: Path, federation: LocalFederation, spec: VerticalSpec | None
) -> dict[str, NodeConfig]:
    """Each party's node configuration; policies written once (from ``spec``)."""
    manifest = federation.manifest()
    assert manifest.coordinator is not None  # a local federation always lists one
    policies = {}
    for party in federation.key_dirs:
        path = federation.audit_dir.parent / "policies" / f"{party}.toml"
        if not path.exists():
            if spec is None:
                raise FedpropError(f"{path}: no policy; run `fedprop demo --vertical` first")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(demo_policy(manifest.coordinator.fingerprint(), spec, party))
        policies[party] = path
    data = {p: root / "data" / p for p in federation.key_dirs}
    return federation.node_configs(data, policies=policies, jobs_dir=root / "jobs")


def _stamped(text: str, suffix: str) -> str:
    """``text`` with its ``[job] id`` made unique by ``suffix`` (a job id runs once)."""
    return _JOB_ID.sub(lambda m: f"{m.group(1)}{m.group(2)}-{suffix}{m.group(3)}", text, count=1)


def run_vertical_demo(
    spec_path: Path, source_dir: Path, root: Path, console: Console | None = None
) -> tuple[VerticalRun, VerticalRun]:
    """Train the vertical job at ``spec_path`` on the public data in ``source_dir``, then
    score the bank's customers with it; print and write both results under ``root``."""
    console = console or Console()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    text = spec_path.read_text(encoding="utf-8")
    spec = VerticalSpec.from_toml(_stamped(text, stamp), str(spec_path))
    layout = _layout(spec)
    if set(LAYOUTS[layout]) != set(spec.members):
        raise FedpropError(f"{spec_path}: parties must be {', '.join(LAYOUTS[layout])}")
    data_dir = root / "data"
    if not all((data_dir / p / VERTICAL_FILE).is_file() for p in spec.members):
        console.print(f"Preparing the {layout} parties from [bold]{source_dir}[/]")
        for s in prepare_vertical(layout, source_dir, data_dir, DATA_SEED):
            console.print(f"  {s.party}: {s.rows} customers, {len(s.columns)} columns")
    federation = _federation(root, spec.members)
    nodes = _nodes(root, federation, spec)
    manifest = federation.manifest()
    console.print(
        f"Job [bold]{spec.id}[/]: guest {spec.guest}, hosts {', '.join(spec.hosts)}, "
        f"{spec.aggregation.value} ({spec.key_bits} bits), up to {spec.train.max_epochs} epochs"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("epochs", total=spec.train.max_epochs, loss="-")

        def on_epoch(stats: EpochStats) -> None:
            progress.update(task, completed=stats.epoch, loss=f"{stats.loss:.4f}")

        trained = simulate_vertical(
            spec, nodes, manifest, federation.coordinator(), on_epoch=on_epoch
        )
    assert isinstance(trained, VerticalResult)
    train_run = VerticalRun(trained, write_vertical_result(trained, root / "results" / spec.id))
    _print_training(trained, console)

    score = run_local_score(spec.id, root, console, stamp=stamp)
    verified = verify_logs(manifest, sorted(federation.audit_dir.glob("*.log")))
    verdict = "verify" if verified.ok else f"DO NOT verify ({len(verified.errors)} findings)"
    console.print(f"Privacy logs in {federation.audit_dir}: every party's logs {verdict}")
    if not verified.ok:
        raise JobFailedError("; ".join(str(e) for e in verified.errors[:3]))
    return train_run, score


def run_local_score(
    model: str, root: Path, console: Console | None = None, *, stamp: str | None = None
) -> VerticalRun:
    """Score the bank's customers with the parties' parts of model ``model`` (a vertical
    job trained under ``root``); the ranked list is written at the bank."""
    console = console or Console()
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    parts = sorted((root / "jobs" / "models").glob(f"*/{model}/model.json"))
    if not parts:
        raise FedpropError(f"no party under {root / 'jobs' / 'models'} keeps model '{model}'")
    guest, hosts = _roles(parts, model)
    spec = ScoreSpec.from_toml(
        f"""[job]
id = "{model}-score-{stamp}"
type = "vfl-score"
guest = "{guest}"
hosts = [{", ".join(f'"{h}"' for h in hosts)}]
model = "{model}"
min-intersection = {SCORE_MIN_INTERSECTION}
"""
    )
    federation = _federation(root, spec.members)
    nodes = _nodes(root, federation, None)
    with console.status(f"scoring [bold]{guest}[/]'s customers with model {model}"):
        result = simulate_vertical(spec, nodes, federation.manifest(), federation.coordinator())
    assert isinstance(result, ScoreResult)
    out = nodes[guest].output_dir
    assert out is not None
    target_list = out / f"{spec.id}.csv"
    ranked = pd.read_csv(target_list, dtype={"id": str})
    table = Table(title=f"Target list at {guest}: {result.rows} customers ranked ({target_list})")
    for column in ranked.columns:
        table.add_column(str(column), justify="right")
    for row in ranked.head(SHOWN_ROWS).itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    console.print(
        f"The coordinator learned {result.intersection} aligned and {result.rows} scored "
        f"customers, no id and no score ({result.seconds:.1f} s, {result.hops} hops)"
    )
    path = write_vertical_result(result, root / "results" / spec.id)
    return VerticalRun(result, path, target_list)


def _roles(parts: list[Path], model: str) -> tuple[str, tuple[str, ...]]:
    """The guest and hosts a kept model names (each part names them all)."""
    party = parts[0].parent.parent.name
    part = ModelPart.load(parts[0].parent.parent, model, party)
    return part.guest, part.hosts


def _print_training(result: VerticalResult, console: Console) -> None:
    table = Table(
        title=f"{result.job}: {result.intersection} customers aligned, "
        f"{result.train_rows} train / {result.test_rows} held out",
    )
    for column in ("epoch", "loss", "seconds", "hops", "MB relayed"):
        table.add_column(column, justify="right")
    for e in result.epochs:
        table.add_row(
            str(e.epoch), f"{e.loss:.4f}", f"{e.seconds:.1f}", str(e.hops), f"{e.bytes / 1e6:.1f}"
        )
    console.print(table)
    m = result.metrics
    console.print(
        f"Released by the bank (held-out rows): AUC {m['auc']:.4f}, KS {m['ks']:.4f}, "
        f"lift {m['lift_10']:.2f} at 10%, {m['lift_20']:.2f} at 20%; "
        f"{result.seconds:.1f} s, {result.hops} hops"
    )
