"""``fedprop``: the command line for data teams, node operators and auditors.

Every user error ends in one line on stderr naming the problem and exit code 2;
nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedprop.errors import FedpropError, JobFailedError

if TYPE_CHECKING:
    from fedprop.audit import AuditResult
    from fedprop.deploy import CoordinatorSetup, NodeLaunch

__all__ = ["main"]

#: Where the bundled public data sits relative to the project checkout.
DEFAULT_SOURCE = Path("../shared/data/bank-full.csv")
DEFAULT_SPEC = Path("configs/bank-marketing-hfl.toml")
DEFAULT_DATA = Path("data/parties")
DEFAULT_OUT = Path("runs/demo")
DEFAULT_QUERY = Path("configs/query-take-up.toml")
DEFAULT_QUERY_OUT = Path("runs/query")
DEFAULT_VERTICAL_SPEC = Path("configs/bank-marketing-vfl.toml")
DEFAULT_VERTICAL_ROOT = Path("runs/vertical")


def _cmd_split(args: argparse.Namespace) -> int:
    from fedprop.data.split import split_bank_marketing

    for s in split_bank_marketing(args.source, args.out, seed=args.seed, overwrite=args.overwrite):
        print(
            f"{s.party}: {s.train_rows} train, {s.test_rows} test rows "
            f"({s.train_positive_rate:.1%} / {s.test_positive_rate:.1%} positive) -> {s.folder}"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.vertical:
        from fedprop.joint import run_vertical_demo

        source = args.source.parent if args.source.suffix == ".csv" else args.source
        root = DEFAULT_VERTICAL_ROOT if args.out is None else args.out
        run_vertical_demo(args.spec or DEFAULT_VERTICAL_SPEC, source, root)
        return 0

    from fedprop.demo import DemoConfig, run_demo

    overrides: dict[str, dict[str, object]] = {}
    if args.model:
        overrides.setdefault("model", {})["kind"] = args.model
    if args.rounds:
        overrides.setdefault("train", {})["rounds"] = args.rounds
    if args.aggregation:
        overrides.setdefault("job", {})["aggregation"] = args.aggregation
    results = run_demo(
        DemoConfig(
            spec_path=args.spec or DEFAULT_SPEC,
            source=args.source,
            data_dir=args.data,
            out_dir=args.out or DEFAULT_OUT,
            overrides=overrides,
        )
    )
    return 0 if all(c["passed"] for c in results["checks"]) else 1


def _cmd_keygen(args: argparse.Namespace) -> int:
    from fedprop.crypto.identity import PUBLIC_FILE, generate_identity, save_identity
    from fedprop.deploy import make_node_auth_key

    identity = generate_identity(args.name)
    save_identity(identity, args.out)
    auth_public = make_node_auth_key(args.out)
    print(f"{args.name}: identity keys written to {args.out} (owner-only permissions)")
    print(f"send {args.out / PUBLIC_FILE} to whoever assembles the federation manifest")
    print(f"send {auth_public} to the coordinator, who registers it with the SuperLink")
    print(f"fingerprint (compare it out of band): {identity.public.fingerprint()}")
    return 0


def _cmd_node_check(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from fedprop.node_check import check_node
    from fedprop.spec import JobSpec

    checks = check_node(
        parse_config_args([args.node_config]),
        JobSpec.load(args.spec),
        superlink=args.superlink,
        root_certificates=args.root_certificates,
    )
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def _node_launch(args: argparse.Namespace) -> NodeLaunch:
    from flwr.common.config import parse_config_args

    from fedprop.deploy import NodeLaunch

    return NodeLaunch(
        node_config=parse_config_args([args.node_config]),
        superlink=args.superlink,
        root_certificates=args.root_certificates,
        flwr_home=args.flwr_home,
        runtime_port=args.runtime_port,
        poll_interval=args.poll_interval,
    )


def _cmd_node_start(args: argparse.Namespace) -> int:
    from fedprop.deploy import start_node
    from fedprop.spec import JobSpec

    return start_node(_node_launch(args), JobSpec.load(args.spec) if args.spec else None)


def _cmd_node_budget(args: argparse.Namespace) -> int:
    from fedprop.privacy import BudgetLedger, load_policy

    policy = load_policy(args.policy)
    if policy.dp is None:
        raise FedpropError(f"{args.policy}: the policy sets no [dp] budget")
    ledger = BudgetLedger(args.ledger, policy.dp)
    rows = ledger.summary()
    print(f"{len(rows)} spend(s) in {args.ledger}; window {policy.dp.period_days} days")
    for r in rows:
        released = f", released {r.released_at:%F %T}" if r.released_at else ""
        print(
            f"{r.at:%F %T}  {r.coordinator[:16]}  {r.what} {r.query_id}: "
            f"epsilon {r.epsilon:.4g}, delta {r.delta:.2g} "
            f"(window total {r.cumulative_epsilon:.4g}, {r.cumulative_delta:.2g}){released}"
        )
    for t in ledger.totals():
        print(
            f"coordinator {t.coordinator[:16]}: spent epsilon {t.spent.epsilon:.4g} of "
            f"{t.limit_epsilon:.4g}, delta {t.spent.delta:.2g} of {t.limit_delta:.2g} "
            f"({t.spent.method})"
        )
    return 0


def _coordinator_setup(args: argparse.Namespace) -> CoordinatorSetup:
    from fedprop.deploy import CoordinatorSetup

    return CoordinatorSetup(certs=args.certs, state=args.state, host=args.host, port=args.port)


def _cmd_coordinator_start(args: argparse.Namespace) -> int:
    from fedprop.deploy import start_coordinator

    start_coordinator(_coordinator_setup(args))


def _cmd_coordinator_register(args: argparse.Namespace) -> int:
    from fedprop.deploy import register_node

    node_id = register_node(args.state / "flwr", args.public_key, args.name)
    print(f"node '{args.name}' registered (Flower node id {node_id})")
    return 0


def _cmd_coordinator_submit(args: argparse.Namespace) -> int:
    from fedprop.apps.server_app import ANSWER_CSV, RESULT_FILE
    from fedprop.deploy import submit_job

    asked = {"query": args.query} if args.query else {"job-spec": args.job}
    paths = {
        **asked,
        "manifest": args.manifest,
        "coordinator-key-dir": args.key_dir,
        "audit-dir": args.audit_dir,
        "results-dir": args.results,
    }
    run_config = {key: str(Path(value).resolve()) for key, value in paths.items()}
    outcome = submit_job(args.state / "flwr", args.app_dir, run_config, timeout=args.timeout)
    print(f"run {outcome.run_id}: {outcome.status} after {outcome.seconds:.1f} s")
    if not outcome.completed:
        raise JobFailedError(outcome.details or outcome.status)
    if args.query:
        print(f"answer: {args.results / ANSWER_CSV}")
        return 0
    path = args.results / RESULT_FILE
    result = json.loads(path.read_text(encoding="utf-8"))
    if "final" in result:
        print(f"global AUC {result['final']['auc']:.4f}; result: {path}")
    elif "metrics" in result:  # vertical training: the guest's released metrics
        print(f"AUC {result['metrics']['auc']:.4f}; result: {path}")
    else:  # joint scoring: the target list stays at the guest
        print(f"{result['rows']} customers scored at the guest; result: {path}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from fedprop.ask import run_local_query

    run_local_query(args.query, args.source, args.data, args.out)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from fedprop.joint import run_local_score

    run_local_score(args.model, args.root)
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    from fedprop.crypto.identity import Manifest, NodePublicKeys
    from fedprop.files import write_text_atomic

    def read(path: Path) -> NodePublicKeys:
        try:
            return NodePublicKeys.from_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FedpropError(f"{path}: cannot read: {exc.strerror}") from None
        except FedpropError as exc:
            raise FedpropError(f"{path}: {exc}") from None

    nodes = tuple(read(p) for p in args.public)
    coordinator = read(args.coordinator) if args.coordinator else None
    manifest = Manifest(federation=args.name, nodes=nodes, coordinator=coordinator)
    if args.out.exists() and not args.overwrite:
        raise FedpropError(f"{args.out} exists; pass --overwrite to replace it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, manifest.to_json())
    for node in nodes:
        print(f"node {node.name}: {node.fingerprint()}")
    if coordinator is not None:
        print(f"coordinator {coordinator.name}: {coordinator.fingerprint()}")
    print(f"manifest of '{args.name}' written to {args.out}")
    print(f"manifest fingerprint (every node compares it before pinning): {manifest.fingerprint()}")
    return 0


def _verified(args: argparse.Namespace) -> AuditResult:
    from fedprop.apps.audit import verify_logs
    from fedprop.crypto.identity import Manifest

    try:
        manifest = Manifest.from_json(args.manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FedpropError(f"{args.manifest}: cannot read the manifest: {exc.strerror}") from None
    return verify_logs(manifest, args.logs)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    result = _verified(args)
    print(result.summary())
    return 0 if result.ok else 1


def _cmd_audit_report(args: argparse.Namespace) -> int:
    from fedprop.audit import write_report

    result = _verified(args)
    json_path, html_path = write_report(result, args.out)
    print(result.summary().splitlines()[0])
    print(f"Report: {html_path}\nJSON:   {json_path}")
    return 0 if result.ok else 1


def _cmd_certs(args: argparse.Namespace) -> int:
    from fedprop.certs import make_pilot_certs

    certs = make_pilot_certs(args.out, args.host, days=args.days)
    print(f"pilot CA and coordinator certificate for {', '.join(args.host)} in {certs.folder}")
    print(f"give {certs.ca_cert} to every node (--root-certificates); keep ca.key offline")
    print(
        f"coordinator: flower-superlink --ssl-ca-certfile {certs.ca_cert} "
        f"--ssl-certfile {certs.server_cert} --ssl-keyfile {certs.server_key}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedprop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare party data").add_subparsers(
        dest="data_command", required=True
    )
    split = data.add_parser("split", help="split bank-full.csv into one folder per bank")
    split.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="bank-full.csv")
    split.add_argument("--out", type=Path, default=DEFAULT_DATA, help="output folder")
    split.add_argument("--seed", type=int, default=20240501, help="train/test split seed")
    split.add_argument("--overwrite", action="store_true", help="replace an existing split")
    split.set_defaults(func=_cmd_split)

    demo = sub.add_parser("demo", help="run the four-bank federation and compare with baselines")
    demo.add_argument(
        "--spec", type=Path, help=f"job spec (default {DEFAULT_SPEC}; {DEFAULT_VERTICAL_SPEC})"
    )
    demo.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="bank-full.csv (its folder)"
    )
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA, help="party data folder")
    demo.add_argument(
        "--out", type=Path, help=f"results folder (default {DEFAULT_OUT}; {DEFAULT_VERTICAL_ROOT})"
    )
    demo.add_argument(
        "--vertical",
        action="store_true",
        help="a bank and a partner with different columns of the same customers: "
        "train jointly, then score the bank's customers",
    )
    demo.add_argument("--model", choices=("logreg", "mlp"), help="override the spec's model")
    demo.add_argument("--rounds", type=int, help="override the spec's number of rounds")
    demo.add_argument(
        "--aggregation", choices=("paillier", "plaintext"), help="override the spec's mode"
    )
    demo.set_defaults(func=_cmd_demo)

    query = sub.add_parser(
        "query", help="ask the four demo banks an aggregate question (encrypted, noised)"
    )
    query.add_argument("query", type=Path, nargs="?", default=DEFAULT_QUERY, help="query (TOML)")
    query.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="bank-full.csv")
    query.add_argument("--data", type=Path, default=DEFAULT_DATA, help="party data folder")
    query.add_argument("--out", type=Path, default=DEFAULT_QUERY_OUT, help="answer folder")
    query.set_defaults(func=_cmd_query)

    score = sub.add_parser(
        "score", help="rank the bank's customers with a vertical model (target list at the bank)"
    )
    score.add_argument("model", help="the vertical training job whose model to use")
    score.add_argument(
        "--root", type=Path, default=DEFAULT_VERTICAL_ROOT, help="the vertical demo's folder"
    )
    score.set_defaults(func=_cmd_score)

    node = sub.add_parser("node", help="a partner institution's node").add_subparsers(
        dest="node_command", required=True
    )
    keygen = node.add_parser("keygen", help="generate this node's identity keys")
    keygen.add_argument("--name", required=True, help="this node's party name, e.g. bank-a")
    keygen.add_argument("--out", type=Path, required=True, help="new key folder")
    keygen.set_defaults(func=_cmd_keygen)
    check = node.add_parser(
        "check", help="say what is wrong with this node's set-up, without starting anything"
    )
    check.add_argument(
        "--node-config", required=True, help="the string given to the SuperNode's --node-config"
    )
    check.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="job spec to check data")
    check.add_argument("--superlink", help="coordinator address host:port to try")
    check.add_argument("--root-certificates", type=Path, help="CA certificate to trust")
    check.set_defaults(func=_cmd_node_check)
    start = node.add_parser("start", help="check this node's set-up, then start its SuperNode")
    start.add_argument(
        "--node-config", required=True, help="party, data-dir, key-dir, manifest, audit-dir, ..."
    )
    start.add_argument("--superlink", required=True, help="coordinator address host:port")
    start.add_argument(
        "--root-certificates", type=Path, required=True, help="CA certificate to trust"
    )
    start.add_argument("--spec", type=Path, help="also check the data against this job spec")
    start.add_argument("--flwr-home", type=Path, default=Path("flwr-node"), help="Flower's home")
    start.add_argument("--runtime-port", type=int, default=9094, help="local Runtime API port")
    start.add_argument(
        "--poll-interval", type=float, default=0.25, help="seconds between polls when idle"
    )
    start.set_defaults(func=_cmd_node_start)
    budget = node.add_parser("budget", help="what the node's privacy budget spent, by whom, when")
    budget.add_argument("--ledger", type=Path, required=True, help="the node's budget ledger")
    budget.add_argument("--policy", type=Path, required=True, help="the node's policy file")
    budget.set_defaults(func=_cmd_node_budget)

    coordinator = sub.add_parser(
        "coordinator", help="the data team's SuperLink and jobs"
    ).add_subparsers(dest="coordinator_command", required=True)
    start = coordinator.add_parser("start", help="check the set-up, then start the SuperLink")
    start.add_argument("--certs", type=Path, required=True, help="ca.crt, server.crt, server.key")
    start.add_argument("--state", type=Path, required=True, help="state database and logs folder")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on")
    start.add_argument("--port", type=int, default=9093, help="port to listen on")
    start.set_defaults(func=_cmd_coordinator_start)
    register = coordinator.add_parser("register", help="admit a node's authentication key")
    register.add_argument("public_key", type=Path, help="the node's node-auth.pub")
    register.add_argument("--name", required=True, help="the node's party name")
    register.add_argument("--state", type=Path, required=True, help="the coordinator's state")
    register.set_defaults(func=_cmd_coordinator_register)
    submit = coordinator.add_parser("submit", help="run a job on the SuperLink; wait for it")
    asked = submit.add_mutually_exclusive_group()
    asked.add_argument("--job", type=Path, default=DEFAULT_SPEC, help="job spec (TOML)")
    asked.add_argument("--query", type=Path, help="a query (TOML) instead of a training job")
    submit.add_argument("--manifest", type=Path, required=True, help="federation manifest")
    submit.add_argument("--key-dir", type=Path, required=True, help="coordinator's identity")
    submit.add_argument("--audit-dir", type=Path, required=True, help="coordinator's log folder")
    submit.add_argument("--results", type=Path, required=True, help="folder for result.json")
    submit.add_argument("--state", type=Path, required=True, help="the coordinator's state")
    submit.add_argument("--app-dir", type=Path, default=Path("."), help="the fedprop app")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    submit.set_defaults(func=_cmd_coordinator_submit)

    federation = sub.add_parser("federation", help="the federation's membership").add_subparsers(
        dest="federation_command", required=True
    )
    manifest = federation.add_parser(
        "manifest", help="assemble the manifest from the nodes' public.json files"
    )
    manifest.add_argument("public", type=Path, nargs="+", help="each node's public.json")
    manifest.add_argument("--name", required=True, help="federation name")
    manifest.add_argument("--coordinator", type=Path, help="the coordinator's public.json")
    manifest.add_argument("--out", type=Path, required=True, help="manifest file to write")
    manifest.add_argument("--overwrite", action="store_true", help="replace an existing file")
    manifest.set_defaults(func=_cmd_manifest)

    certs = sub.add_parser(
        "certs", help="a private CA and a coordinator certificate, for tests and pilots only"
    )
    certs.add_argument("--out", type=Path, required=True, help="new folder for the files")
    certs.add_argument(
        "--host", action="append", required=True, help="host name or IP of the coordinator"
    )
    certs.add_argument("--days", type=int, default=90, help="validity (default 90)")
    certs.set_defaults(func=_cmd_certs)

    audit = sub.add_parser("audit", help="verify parties' privacy logs, offline").add_subparsers(
        dest="audit_command", required=True
    )
    for name, func, text in (
        ("verify", _cmd_audit_verify, "check every log and the logs against each other"),
        ("report", _cmd_audit_report, "write the auditor's report (HTML and JSON)"),
    ):
        command = audit.add_parser(name, help=text, description=f"{text}; exit code 0 only "
                                   "when every log verifies")  # fmt: skip
        command.add_argument("logs", type=Path, nargs="+", help="each party's <party>.log")
        command.add_argument("--manifest", type=Path, required=True, help="federation manifest")
        if name == "report":
            command.add_argument("--out", type=Path, default=Path("runs/audit"), help="folder")
        command.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedprop`` command."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except FedpropError as exc:
        print(f"fedprop: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
