"""``fedprop``: the command line for data teams, node operators and auditors.

Every user error ends in one line on stderr naming the problem and exit code 2;
nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedprop.errors import FedpropError

__all__ = ["main"]

#: Where the bundled public data sits relative to the project checkout.
DEFAULT_SOURCE = Path("../shared/data/bank-full.csv")
DEFAULT_SPEC = Path("configs/bank-marketing-hfl.toml")
DEFAULT_DATA = Path("data/parties")
DEFAULT_OUT = Path("runs/demo")


def _cmd_split(args: argparse.Namespace) -> int:
    from fedprop.data.split import split_bank_marketing

    for s in split_bank_marketing(args.source, args.out, seed=args.seed, overwrite=args.overwrite):
        print(
            f"{s.party}: {s.train_rows} train, {s.test_rows} test rows "
            f"({s.train_positive_rate:.1%} / {s.test_positive_rate:.1%} positive) -> {s.folder}"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
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
            spec_path=args.spec,
            source=args.source,
            data_dir=args.data,
            out_dir=args.out,
            overrides=overrides,
        )
    )
    return 0 if all(c["passed"] for c in results["checks"]) else 1


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
    demo.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="job spec (TOML)")
    demo.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="bank-full.csv")
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA, help="party data folder")
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    demo.add_argument("--model", choices=("logreg", "mlp"), help="override the spec's model")
    demo.add_argument("--rounds", type=int, help="override the spec's number of rounds")
    demo.add_argument(
        "--aggregation", choices=("paillier", "plaintext"), help="override the spec's mode"
    )
    demo.set_defaults(func=_cmd_demo)
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
