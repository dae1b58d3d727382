"""The coordinator's Flower ServerApp: runs protocol steps over Flower's Grid.

:class:`GridTransport` is the only place that knows how a protocol request
becomes Flower messages: one message per connected node, replies matched to
parties by the name each node answers with, and any node error or missing
reply turned into a :class:`JobFailedError` that names the party.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from flwr.app import Context, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedprop.apps.audit import CoordinatorAudit, open_party_log, step_label
from fedprop.apps.records import attach_checkpoint, error_party, from_record, to_record
from fedprop.audit import AuditLog
from fedprop.crypto.identity import Manifest, load_identity
from fedprop.errors import FedpropError, JobFailedError, SpecError
from fedprop.files import write_text_atomic
from fedprop.protocols.analytics import QueryOutcome, QuerySpec, answer_frame, run_query
from fedprop.protocols.hfl import HflResult, ProgressFn, Step, run_hfl
from fedprop.protocols.messages import AbortRequest
from fedprop.protocols.steps import REPLIES, VERTICAL_KINDS, job_of
from fedprop.protocols.vertical import ProgressFn as EpochFn
from fedprop.protocols.vertical import (
    ScoreResult,
    ScoreSpec,
    VerticalResult,
    VerticalSpec,
    VStep,
    parse_vertical,
    run_vertical,
    run_vertical_score,
)
from fedprop.spec import JobSpec

__all__ = [
    "ANSWER_CSV",
    "ANSWER_JSON",
    "RESULT_FILE",
    "CoordinatorConfig",
    "GridTransport",
    "app",
    "build_server_app",
    "load_job",
    "write_answer",
    "write_result",
    "write_vertical_result",
]

#: Seconds to wait for every party's node to connect before a job starts.
NODE_WAIT_SECONDS = 120.0
#: Seconds to wait for the replies to one step.
STEP_TIMEOUT_SECONDS = 600.0
#: Seconds the coordinator waits for the nodes to acknowledge that a failed job stopped.
ABORT_WAIT_SECONDS = 30.0
#: Seconds between two pulls for replies: short, since a pull is a cheap local call (or
#: one small request to the SuperLink) and every step waits for its replies.
PULL_INTERVAL_SECONDS = 0.005


class GridTransport:
    """Broadcasts protocol requests to the job's nodes through a Flower ``Grid``."""

    def __init__(
        self,
        grid: Grid,
        parties: tuple[str, ...],
        *,
        audit: CoordinatorAudit | None,
        node_wait: float = NODE_WAIT_SECONDS,
        step_timeout: float = STEP_TIMEOUT_SECONDS,
    ) -> None:
        self.grid = grid
        self.parties = parties
        self.audit = audit
        self.node_wait = node_wait
        self.step_timeout = step_timeout
        self._party_of: dict[int, str] = {}
        self._round = 0
        self._failed: tuple[str, list[str]] | None = None

    def _fail(self, label: str, parties: Sequence[str], message: str) -> NoReturn:
        """Remember which step failed at which parties (for :meth:`abort`); raise."""
        self._failed = (label, list(parties))
        raise JobFailedError(message)

    def _node_ids(self) -> list[int]:
        deadline = time.monotonic() + self.node_wait
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= len(self.parties):
                return node_ids
            if time.monotonic() > deadline:
                raise JobFailedError(
                    f"only {len(node_ids)} of {len(self.parties)} nodes connected "
                    f"within {self.node_wait:.0f} s"
                )
            time.sleep(0.5)

    def _node_ids_of(self, parties: Sequence[str]) -> list[int]:
        node_of = {party: node_id for node_id, party in self._party_of.items()}
        unknown = [p for p in parties if p not in node_of]
        if unknown:
            raise JobFailedError(f"no connected node has answered as {', '.join(unknown)}")
        return [node_of[p] for p in parties]

    def _send_and_receive(self, messages: list[Message], label: str) -> dict[int, Message]:
        """Push ``messages``; pull replies until all are in or the step times out; return
        each reply by the node the message it answers went to (an error the SuperLink
        makes for a node that is gone comes from the SuperLink, not from that node).

        A reply from a node already known is logged as it arrives (:meth:`_log_receipt`),
        while the step waits for the slower nodes. Polls every
        :data:`PULL_INTERVAL_SECONDS` (Flower's own loop waits 0.1 s in simulation and
        3 s against a SuperLink between pulls, which would add up to that much to every
        step).
        """
        ids = list(self.grid.push_messages(messages))
        destination = dict(zip(ids, (m.metadata.dst_node_id for m in messages), strict=True))
        pending = set(ids)
        deadline = time.monotonic() + self.step_timeout
        replies: dict[int, Message] = {}
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(pending):
                answered = reply.metadata.reply_to_message_id
                node_id = destination[answered]
                replies[node_id] = reply
                pending.discard(answered)
                if node_id in self._party_of:
                    self._log_receipt(node_id, reply, label)
            if pending:
                time.sleep(PULL_INTERVAL_SECONDS)
        return replies

    def _party(self, node_id: int) -> str:
        return self._party_of.get(node_id, f"node-{node_id}")

    def _log_sends(self, messages: list[Message], label: str) -> list[Message]:
        """Log each message to a known node, then attach the latest signed checkpoint to
        every message; return those to nodes not known yet (logged once they answer)."""
        if self.audit is None:
            return []
        unknown = []
        with self.audit.log.batch():
            for m in messages:
                if m.metadata.dst_node_id in self._party_of:
                    self.audit.sent(self._party(m.metadata.dst_node_id), m, label)
                else:
                    unknown.append(m)
        note = self.audit.checkpoint()
        for m in messages:
            attach_checkpoint(m, note)
        return unknown

    def _log_receipt(self, node_id: int, reply: Message, label: str) -> None:
        """Log a reply from a known node (witnessing its checkpoint).

        The coordinator acts on a reply only by sending its next message, so a receipt is
        not ``fsync``'d on its own: the write-ahead batch of the next sends
        (:meth:`_log_sends`) makes it durable before any message leaves, and the log's
        close does when the job ends (a crash in between loses receipts that nothing was
        done with)."""
        if self.audit is None:
            return
        with self.audit.log.batch(sync=False):
            if reply.metadata.src_node_id == node_id:
                self.audit.received(self._party(node_id), reply, label)
            else:  # made by the SuperLink (the node is gone): nothing the node sent
                self.audit.unanswered(self._party(node_id), str(reply.error.reason), label)

    def _log_discovered(
        self, unknown: list[Message], replies: Mapping[int, Message], label: str
    ) -> None:
        """Log the sends to nodes that just named themselves, then their replies."""
        if self.audit is None or not unknown:
            return
        with self.audit.log.batch(sync=False):
            for m in unknown:
                self.audit.sent(self._party(m.metadata.dst_node_id), m, label)
            for m in unknown:
                node_id = m.metadata.dst_node_id
                if node_id in replies:
                    self._log_receipt(node_id, replies[node_id], label)

    def broadcast(
        self, step: StrEnum, request: Any, to: Sequence[str] | None = None
    ) -> Mapping[str, Any]:
        """Send ``request`` to the nodes of the parties ``to`` (default: every node);
        return each party's reply. With an audit, every message is on the coordinator's
        log, each request carries its latest signed checkpoint and each reply's checkpoint
        is witnessed."""
        everyone = to is None or set(to) == set(self.parties)
        discovering = everyone and set(self._party_of.values()) != set(self.parties)
        if discovering:
            node_ids = self._node_ids()
        else:
            node_ids = self._node_ids_of(self.parties if to is None else to)
        self._round += 1
        messages = [
            Message(
                to_record(request),
                dst_node_id=node_id,
                message_type=step.value,
                group_id=str(self._round),
            )
            for node_id in node_ids
        ]
        label = step_label(step.value, request)
        unknown = self._log_sends(messages, label)
        replies = self._send_and_receive(messages, label)
        decoded: dict[int, Any] = {}
        undecodable: dict[int, str] = {}
        for node_id, r in replies.items():
            if not r.has_error():
                try:
                    decoded[node_id] = from_record(REPLIES[step.value], r.content)
                except FedpropError as exc:
                    undecodable[node_id] = str(exc)
        for node_id, r in replies.items():
            # A node names itself in its reply, or, if it refused, in its error.
            claimed = decoded[node_id].party if node_id in decoded else error_party(r)
            if node_id not in self._party_of and claimed in self.parties:
                self._party_of[node_id] = str(claimed)
        self._log_discovered(unknown, replies, label)
        if discovering:
            # Until every party has answered once, the step goes to every connected node;
            # a node the SuperLink reports gone (a stale entry after a restart) is no party.
            for node_id, r in list(replies.items()):
                if r.has_error() and r.error.code == ErrorCode.NODE_UNAVAILABLE:
                    del replies[node_id]
                    node_ids.remove(node_id)
        failed = {self._party(n): r for n, r in replies.items() if r.has_error()}
        if failed:
            errors = "; ".join(
                str(r.error.reason) if error_party(r) == name else f"{name}: {r.error.reason}"
                for name, r in failed.items()
            )
            self._fail(label, list(failed), f"{step.value} failed: {errors}")
        silent = [self._party(n) for n in node_ids if n not in replies]
        if silent:
            timeout = f"{self.step_timeout:.0f} s"
            self._fail(
                label, silent, f"{step.value}: no reply within {timeout} from {', '.join(silent)}"
            )
        by_party: dict[str, Any] = {}
        for node_id in replies:
            name = self._party(node_id)
            if node_id in undecodable:
                self._fail(label, [name], f"{name}: {undecodable[node_id]}")
            reply = decoded[node_id]
            if reply.party in by_party:
                self._fail(label, [reply.party], f"two nodes answered as party '{reply.party}'")
            self._party_of[node_id] = reply.party
            by_party[reply.party] = reply
        missing = [p for p in (to or self.parties) if p not in by_party]
        if missing:
            self._fail(label, missing, f"{step.value}: no node answered as {', '.join(missing)}")
        return by_party

    def abort(self, spec_text: str, step: StrEnum = Step.ABORT) -> None:
        """Tell the nodes of every party that answered and did not fail that the job
        stopped (with ``step``, the job type's abort step), naming only the failed step and
        parties, or the coordinator when its own check failed; best effort, bounded wait."""
        label, failed = self._failed or ("the coordinator's check", [])
        told = [p for p in self.parties if p in self._party_of.values() and p not in failed]
        if not told:
            return
        reason = f"{label} failed at {', '.join(failed)}" if failed else f"{label} failed"
        request = AbortRequest(spec_text, reason)
        saved, self.step_timeout = self.step_timeout, min(self.step_timeout, ABORT_WAIT_SECONDS)
        try:
            self.broadcast(step, request, to=told)
        except FedpropError:
            pass
        finally:
            self.step_timeout = saved


ResultSink = Callable[[HflResult], None]
AnswerSink = Callable[[QueryOutcome], None]
VerticalSink = Callable[[VerticalResult | ScoreResult], None]
#: A job the coordinator runs: horizontal training, vertical training or joint scoring.
AnyJob = JobSpec | VerticalSpec | ScoreSpec


def load_job(path: Path) -> AnyJob:
    """Read a job spec file of any job type (its ``[job] type`` says which)."""
    text = _read_text(path, "job spec")
    ref = job_of(text)
    if ref is not None and ref.kind in VERTICAL_KINDS:
        try:
            return parse_vertical(text)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return JobSpec.from_toml(text, str(path))


def build_server_app(
    spec: AnyJob | None = None,
    manifest: Manifest | None = None,
    *,
    query: str | None = None,
    coordinator: CoordinatorConfig | None = None,
    progress: ProgressFn | None = None,
    on_epoch: EpochFn | None = None,
    on_result: ResultSink | None = None,
    on_answer: AnswerSink | None = None,
    on_vertical: VerticalSink | None = None,
    audit: bool = True,
) -> ServerApp:
    """A ServerApp that runs a job (training, vertical training or scoring) or a query.

    A job: ``spec`` or the run config's ``job-spec`` (path); a query: the text ``query``
    or the run config's ``query`` (path). The federation is ``manifest`` or the run
    config's ``manifest`` (path), and the coordinator's identity and log folder are
    ``coordinator`` or the run config's ``coordinator-key-dir`` and ``audit-dir``. With
    ``results-dir``, the result is also written there (:func:`write_result`,
    :func:`write_answer`, :func:`write_vertical_result`); ``step-timeout`` bounds the
    wait for every node's reply to a step (seconds). ``progress`` sees each training round,
    ``on_epoch`` each vertical epoch. ``audit=False`` exists only to measure what logging
    costs (horizontal training).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = context.run_config
        federation = manifest or _load_manifest(Path(str(_run_config(config, "manifest"))))
        timeout = float(str(config.get("step-timeout", STEP_TIMEOUT_SECONDS)))

        def where() -> CoordinatorConfig:
            return coordinator or CoordinatorConfig(
                Path(str(_run_config(config, "coordinator-key-dir"))),
                Path(str(_run_config(config, "audit-dir"))),
            )

        @contextmanager
        def logged(parties: tuple[str, ...], job_id: str) -> Iterator[GridTransport]:
            """A transport on the Grid for one job, every message on the coordinator's log."""
            with where().open_log(federation) as log:
                audited = CoordinatorAudit(log, federation, job_id)
                yield GridTransport(grid, parties, audit=audited, step_timeout=timeout)

        results = Path(str(config["results-dir"])) if "results-dir" in config else None
        query_text = query
        if query_text is None and spec is None and "query" in config:
            query_text = _read_text(Path(str(config["query"])), "query")
        if query_text is not None:
            asked = QuerySpec.from_toml(query_text, "query")
            with logged(asked.parties, asked.id) as transport:
                try:
                    outcome = run_query(
                        query_text, transport, federation, load_identity(where().key_dir)
                    )
                except JobFailedError:
                    transport.abort(query_text)
                    raise
            if results is not None:
                write_answer(outcome, results)
            if on_answer is not None:
                on_answer(outcome)
            return
        job = spec or load_job(Path(str(_run_config(config, "job-spec"))))
        if isinstance(job, VerticalSpec | ScoreSpec):
            with logged(job.members, job.id) as transport:
                done = _run_vertical(job, transport, federation, on_epoch)
            if results is not None:
                write_vertical_result(done, results)
            if on_vertical is not None:
                on_vertical(done)
            return

        def run(transport: GridTransport) -> HflResult:
            try:
                return run_hfl(job, transport, federation, progress=progress)
            except JobFailedError:
                transport.abort(job.text)
                raise

        if not audit:
            result = run(GridTransport(grid, job.parties, audit=None, step_timeout=timeout))
        else:
            with logged(job.parties, job.id) as transport:
                result = run(transport)
        if results is not None:
            write_result(result, results)
        if on_result is not None:
            on_result(result)

    return server_app


def _run_vertical(
    job: VerticalSpec | ScoreSpec,
    transport: GridTransport,
    federation: Manifest,
    on_epoch: EpochFn | None,
) -> VerticalResult | ScoreResult:
    """A vertical job over the Grid; a failure aborts it at the parties still answering."""

    def abort(reason: str) -> None:
        transport.abort(job.text, VStep.ABORT)

    if isinstance(job, VerticalSpec):
        return run_vertical(job, transport, federation, progress=on_epoch, abort=abort)
    return run_vertical_score(job, transport, federation, abort=abort)


#: The result file a deployed job writes into its ``results-dir``.
RESULT_FILE = "result.json"
#: The answer files a query writes into its ``results-dir``.
ANSWER_JSON = "answer.json"
ANSWER_CSV = "answer.csv"


def write_result(result: HflResult, folder: Path) -> Path:
    """Write what the coordinator learned (per-round and final global metrics, timing,
    and the final model if every node released it) to ``folder/result.json``."""
    payload = {
        "job": result.spec.id,
        "seconds": result.seconds,
        "final": result.final.to_dict(),
        "rounds": [
            {"round": r.round, "seconds": r.seconds, "auc": r.metrics.auc, "ks": r.metrics.ks}
            for r in result.rounds
        ],
        "weights": None if result.weights is None else [float(w) for w in result.weights],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_FILE
    write_text_atomic(path, json.dumps(payload, indent=2), mode=0o600)
    return path


def write_vertical_result(result: VerticalResult | ScoreResult, folder: Path) -> Path:
    """Write what the coordinator learned from a vertical job (training: the intersection
    size, per-epoch losses, hops and bytes, the released metrics; scoring: two counts) to
    ``folder/result.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_FILE
    write_text_atomic(path, json.dumps(dataclasses.asdict(result), indent=2), mode=0o600)
    return path


def write_answer(outcome: QueryOutcome, folder: Path) -> tuple[Path, Path]:
    """Write a query's answer as ``answer.json`` (everything, with noise scales) and
    ``answer.csv`` (one row per released or suppressed cell)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / ANSWER_JSON, folder / ANSWER_CSV
    write_text_atomic(json_path, outcome.answer.to_json(), mode=0o600)
    write_text_atomic(csv_path, answer_frame(outcome.answer).to_csv(index=False), mode=0o600)
    return json_path, csv_path


@dataclass(frozen=True)
class CoordinatorConfig:
    """Where the coordinator's identity keys and privacy log are."""

    key_dir: Path
    audit_dir: Path

    def open_log(self, manifest: Manifest) -> AuditLog:
        """Open the coordinator's log; it must be the manifest's coordinator."""
        identity = load_identity(self.key_dir)
        listed = manifest.coordinator
        if listed is None or listed != identity.public:
            raise JobFailedError(
                f"the keys in {self.key_dir} are not the coordinator the manifest of "
                f"'{manifest.federation}' lists; nodes could not check its checkpoints"
            )
        return open_party_log(self.audit_dir, identity, manifest.federation)


def _run_config(config: Mapping[str, object], key: str) -> object:
    if key not in config:
        raise JobFailedError(f"the run config lacks '{key}'")
    return config[key]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FedpropError(f"{path}: cannot read the {what}: {exc}") from None


def _load_manifest(path: Path) -> Manifest:
    return Manifest.from_json(_read_text(path, "manifest"))


#: The ServerApp a deployed SuperLink runs (``[tool.flwr.app.components]``).
app = build_server_app()
