"""``flgate bench``: its pure parts against flwr's own code, and one --quick run end to end.

The unit tests check what the synthetic SuperNode puts on the wire against
flwr 1.41 itself (the gateway package never imports flwr; tests may), the
arithmetic and the report. The end-to-end test runs the real command and checks
that every figure is there, finite and positive: never the values, which
depend on the machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.bench.capacity import RELAY_CALLS, Capacity, MetricsCost, counted_calls
from gateway.bench.flower_app import CHUNK_BYTES, Control, write_app
from gateway.bench.latency import LatencySamples
from gateway.bench.objects import Exchange
from gateway.bench.paths import default_schemes, is_secure
from gateway.bench.report import (
    BenchReport,
    Figure,
    Target,
    table_rows,
    to_json,
    write_json,
)
from gateway.bench.stats import percentile, ratio
from gateway.bench.targets import (
    CAPACITY_RATE,
    LATENCY_P50,
    METRICS_COST,
    RELAY_CPU,
    SITE_CPU,
    capacity_rows,
    edge_latency_rows,
    edge_object_rows,
    in_brief_order,
    latency_rows,
    memory_rows,
    run_rows,
)
from gateway.bench.wholerun import RunKnobs, WholeRun
from gateway.bench.wire import (
    NodeKey,
    ObjectFormatError,
    echo_reply,
    make_object,
    object_head,
    object_id,
    tree_ids,
)
from gateway.cli.bench_cmd import render
from gateway.cli.table import format_table
from gateway.flower.node_auth import fleet_auth_headers
from gateway.proto import bench_fleet_pb2 as pb

# --- arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize("p", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(p: float) -> None:
    samples = [float(x) for x in np.random.default_rng(7).exponential(3.0, size=137)]
    assert percentile(samples, p) == pytest.approx(float(np.percentile(samples, p)))


def test_percentile_of_one_sample_and_bad_input() -> None:
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ratio_is_none_without_both_figures() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


# --- the wire, checked against flwr 1.41 ------------------------------------------


def test_object_bytes_and_ids_are_flowers() -> None:
    from flwr.app.message.arraychunk import ArrayChunk
    from flwr.supercore.inflatable.inflatable_object import get_object_id

    data = b"\x01\x02" * 1000
    chunk = ArrayChunk(data=memoryview(data))
    ours = make_object("ArrayChunk", [], data)
    assert ours == chunk.deflate()
    assert object_id(ours) == get_object_id(ours) == chunk.object_id
    assert object_head(ours) == ("ArrayChunk", [], len(data))
    assert object_head(make_object("Array", ["a" * 64, "b" * 64], b"x")) == (
        "Array",
        ["a" * 64, "b" * 64],
        1,
    )
    with pytest.raises(ObjectFormatError):
        object_head(b"no divider")


@pytest.fixture
def serverapp_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity a ServerApp process has when it makes messages (run 77, task 5)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 77)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 5)


def _instruction() -> tuple[pb.Message, pb.ObjectTree, Any]:
    """A flwr-made instruction message, as PullMessages hands it to a SuperNode."""
    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_object_tree

    blob = np.arange(6 * 1024 * 1024, dtype=np.uint8)  # two chunks
    message = Message(
        RecordDict({"blob": ArrayRecord([blob])}), dst_node_id=42, message_type="query"
    )
    message.metadata.__dict__["_message_id"] = message.object_id
    proto = pb.Message.FromString(message_to_proto(message).SerializeToString())
    tree = pb.ObjectTree.FromString(get_object_tree(message).SerializeToString())
    return proto, tree, message


@pytest.mark.usefixtures("serverapp_task")
def test_tree_ids_are_flowers_post_order() -> None:
    from flwr.supercore.inflatable.inflatable_object import get_object_tree, iterate_object_tree

    _, tree, message = _instruction()
    theirs = [t.object_id for t in iterate_object_tree(get_object_tree(message))]
    assert tree_ids(tree) == theirs
    assert tree_ids(tree)[-1] == tree.object_id


@pytest.mark.usefixtures("serverapp_task")
def test_echo_reply_is_the_reply_flwr_would_make() -> None:
    """Same object bytes (so the same message id) as ``Message(msg.content, reply_to=msg)``."""
    from flwr.app import Message

    instruction, tree, message = _instruction()
    now = time.time()
    reply = echo_reply(instruction, tree, now=now)

    theirs = Message(message.content, reply_to=message)
    theirs.metadata.__dict__["_created_at"] = now
    theirs.metadata.__dict__["_ttl"] = (
        instruction.metadata.created_at + instruction.metadata.ttl - now
    )
    assert reply.object_bytes == theirs.deflate()
    assert reply.message_id == theirs.object_id
    assert [c.object_id for c in reply.tree.children] == [message.content.object_id]
    sent = reply.message.metadata
    assert sent.message_id == reply.message_id
    assert sent.reply_to_message_id == instruction.metadata.message_id
    assert (sent.src_node_id, sent.dst_node_id) == (42, 1)
    assert reply.message.HasField("content") and not reply.message.HasField("error")


def test_auth_headers_verify_as_the_superlink_checks_them() -> None:
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    key = NodeKey()
    at = dt.datetime.now(dt.timezone.utc)
    headers = fleet_auth_headers(key.private_key, now=at)
    public = base64.b64decode(headers["flwr-public-key"], validate=True)
    assert public == key.public_key_pem
    timestamp = headers["flwr-timestamp"]
    assert dt.datetime.fromisoformat(timestamp) == at
    signature = base64.b64decode(headers["flwr-signature"], validate=True)
    assert verify_signature(bytes_to_public_key(public), timestamp.encode("ascii"), signature)


def test_node_key_reuses_a_signature_only_within_max_age() -> None:
    fresh = NodeKey()
    assert fresh.headers() is not fresh.headers()  # max_age 0: signed every call
    reused = NodeKey(max_age=60)
    assert reused.headers() is reused.headers()


# --- the bench's Flower app and transports ----------------------------------------


def test_control_file_names_nodes_and_the_end(tmp_path: Path) -> None:
    control = Control(tmp_path / "control.json")
    assert json.loads(control.path.read_text()) == {"nodes": {}, "stop": False}
    control.send(7, 12)
    control.send(8, 0)
    assert json.loads(control.path.read_text()) == {"nodes": {"7": 12, "8": 0}, "stop": False}
    control.stop()
    assert json.loads(control.path.read_text())["stop"] is True


def test_bench_app_is_a_flower_app(tmp_path: Path) -> None:
    import tomllib

    app = write_app(tmp_path / "app")
    config = tomllib.loads((app / "pyproject.toml").read_text())
    assert config["tool"]["flwr"]["app"]["config"]["chunk-bytes"] == CHUNK_BYTES
    for module in ("server_app.py", "client_app.py"):
        compile((app / "flgate_bench" / module).read_text(), module, "exec")


def test_default_transports_are_the_secure_ones() -> None:
    known = ["grpcs", "https", "redis", "rediss", "tcps"]
    assert [s for s in known if is_secure(s, known)] == ["grpcs", "https", "rediss", "tcps"]
    chosen, skipped = default_schemes()
    assert "redis" not in chosen
    assert set(chosen) | set(skipped) >= {"grpcs", "https", "tcps", "rediss"}
    assert chosen[:3] == ["grpcs", "https", "tcps"]


# --- report -------------------------------------------------------------------------


def _report() -> BenchReport:
    report = BenchReport(quick=True, flower_version="1.41.0", transports=["grpcs", "tcps"])
    latency = report.row(
        "latency.heartbeat.p50",
        "1 latency",
        "SendNodeHeartbeat p50",
        "ms",
        show_added=True,
        target=Target("added_max", 1.0, "added <= 1 ms"),
    )
    latency.figures = {"grpcs": Figure(8.0, 8.5), "tcps": Figure(8.0, 9.5)}
    rss = report.row(
        "memory.relay_peak_rss",
        "5 memory",
        "relay peak RSS",
        "MB",
        target=Target("gateway_max", 250, "<= 250 MB"),
    )
    rss.figures = {"grpcs": Figure(None, 120.0)}
    return report


def test_table_shows_both_figures_ratio_added_and_target() -> None:
    report = _report()
    rows = table_rows(report)
    assert rows[0] == (
        "1 latency",
        "SendNodeHeartbeat p50",
        "ms",
        "grpcs",
        "8.00",
        "8.50",
        "1.06x",
        "+0.50",
        "added <= 1 ms: met",
    )
    assert rows[1][3:] == ("tcps", "8.00", "9.50", "1.19x", "+1.50", "added <= 1 ms: MISSED")
    assert rows[2][4:7] == ("-", "120", "-")  # no direct figure for a relay's memory
    assert rows[3][3:6] == ("tcps", "n/a", "n/a")
    assert render(report).splitlines() == [
        "step       figure                 unit  transport  direct  gateway  ratio  added  target",
        "---------  ---------------------  ----  ---------  ------  -------  -----  -----  "
        + "-" * len("added <= 1 ms: MISSED"),
        "1 latency  SendNodeHeartbeat p50  ms    grpcs        8.00     8.50  1.06x  +0.50  "
        "added <= 1 ms: met",
        "                                        tcps         8.00     9.50  1.19x  +1.50  "
        "added <= 1 ms: MISSED",
        "5 memory   relay peak RSS         MB    grpcs           -      120      -         "
        "<= 250 MB: met",
        "                                        tcps          n/a      n/a      -",
    ]


def test_the_cli_table_pads_each_column_to_its_widest_cell() -> None:
    assert format_table(("ID", "N"), [("1", "long name"), ("22", "")]) == "ID  N\n1   long name\n22"
    numbers = format_table(("a", "n"), [("x", "5"), ("yy", "10")], right=("n",), rule=True)
    assert numbers == "a    n\n--  --\nx    5\nyy  10"
    with pytest.raises(ValueError, match="1 columns"):
        format_table(("a",), [("x", "y")])
    with pytest.raises(ValueError, match="right-align"):
        format_table(("a",), [], right=("b",))


def test_each_step_adds_its_rows_with_their_targets_in_the_brief_order() -> None:
    report = BenchReport(quick=True, flower_version="1.41.0", transports=["tcps"])
    peaks = {"tcps": {"relay": 120_000_000, "site": 80_000_000}}
    memory_rows(report, peaks, model_mb=50, peaks_reset=False)
    samples = LatencySamples()
    for path, seconds in (("direct", 0.002), ("tcps", 0.0025)):
        for method in ("SendNodeHeartbeat", "PullMessages"):
            samples.add(path, method, seconds)
    latency_rows(report, samples, ["tcps"])
    in_brief_order(report)
    assert [row.key for row in report.rows] == [
        "latency.heartbeat.p50",
        "latency.heartbeat.p99",
        "latency.empty-pull.p50",
        "latency.empty-pull.p99",
        "memory.relay_peak_rss",
        "memory.site_peak_rss",
    ]
    assert (report.rows[0].target, report.rows[1].target) == (LATENCY_P50, None)
    assert report.rows[0].figures == {"tcps": Figure(2.0, 2.5)}
    assert report.rows[4].label == "relay peak RSS, 50 MB model in flight"
    assert report.rows[4].figures == {"tcps": Figure(None, 120.0)}
    assert report.rows[5].note == "peak since start: /proc clear_refs refused"


def test_the_edge_rows_put_the_edge_path_beside_straight_to_the_relay_of_its_transport() -> None:
    report = BenchReport(quick=True, flower_version="1.41.0", transports=["grpcs", "tcps"])
    samples = LatencySamples()
    for path, seconds in (("direct", 0.002), ("grpcs", 0.003), ("grpcs via edge", 0.004)):
        for method in ("SendNodeHeartbeat", "PullMessages"):
            samples.add(path, method, seconds)
    edge_latency_rows(report, samples, scheme="grpcs", via="grpcs via edge")
    exchanges = [
        Exchange(path, concurrency, 1, 100_000_000, seconds, 50_000_000, seconds, 0)
        for path, seconds in (("direct", 0.5), ("grpcs", 1.0), ("grpcs via edge", 2.0))
        for concurrency in (1, 8)
    ]
    edge_object_rows(report, exchanges, concurrencies=(1, 8), scheme="grpcs", via="grpcs via edge")
    assert [row.key for row in report.rows] == [
        "latency.edge.heartbeat.p50",
        "latency.edge.empty-pull.p50",
        "objects.edge.pull.c1",
        "objects.edge.pull.c8",
        "objects.edge.push.c1",
        "objects.edge.push.c8",
    ]
    assert report.rows[0].figures == {"grpcs": Figure(3.0, 4.0)}
    assert report.rows[2].figures == {"grpcs": Figure(100.0, 50.0)}
    assert report.rows[4].figures == {"grpcs": Figure(50.0, 25.0)}
    assert all(row.schemes == ("grpcs",) for row in report.rows)
    assert report.missing() == []
    lines = table_rows(report)
    assert len(lines) == 6  # one line each: tcps has no edge path
    assert (
        lines[0][1]
        == "SendNodeHeartbeat p50, via an edge relay (direct = straight to the relay, grpcs only)"
    )
    assert lines[0][3:8] == ("grpcs", "3.00", "4.00", "1.33x", "+1.00")
    assert lines[2][3:8] == ("grpcs", "100", "50.0", "0.50x", "")


def test_missing_figures_are_reported_and_json_is_complete() -> None:
    report = _report()
    assert report.missing() == ["memory.relay_peak_rss/tcps"]
    report.rows[1].figures["tcps"] = Figure(None, float("nan"))
    assert report.missing() == ["memory.relay_peak_rss/tcps"]
    report.rows[1].figures["tcps"] = Figure(None, 99.0)
    assert report.missing() == []
    payload = json.loads(json.dumps(to_json(report)))
    first = payload["rows"][0]["results"]["grpcs"]
    assert first == {
        "direct": 8.0,
        "gateway": 8.5,
        "ratio": 8.5 / 8.0,
        "added": 0.5,
        "target_met": True,
    }
    assert payload["rows"][1]["results"]["grpcs"]["target_met"] is True


def test_json_has_null_where_a_figure_could_not_be_taken(tmp_path: Path) -> None:
    report = _report()
    report.rows[0].figures["tcps"] = Figure(8.0, float("nan"))
    report.details["capacity"] = {"rediss": {"calls": 0, "p99": float("nan")}}
    write_json(report, tmp_path / "bench.json")
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["rows"][0]["results"]["tcps"]["gateway"] is None
    assert payload["rows"][0]["results"]["tcps"]["ratio"] is None
    assert payload["details"]["capacity"]["rediss"] == {"calls": 0, "p99": None}
    assert "memory.relay_peak_rss/tcps" in report.missing()
    assert "latency.heartbeat.p50/tcps" in report.missing()


# --- what metrics cost the relay ----------------------------------------------------


def _window(path: str, calls: int, relay_cpu: float, site_cpu: float = 0.5) -> Capacity:
    return Capacity(
        path=path,
        nodes=50,
        seconds=1.0,
        calls=calls,
        errors=0,
        p50=0.004,
        p99=0.02,
        cpu_seconds={"relay": relay_cpu, "site": site_cpu},
    )


def _capacity_report(on: list[Capacity], off: list[Capacity]) -> BenchReport:
    report = BenchReport(quick=True, flower_version="1.41.0", transports=["grpcs", "tcps"])
    windows = {"direct": _window("direct", 20_000, 0.0), "grpcs": on[0]}
    windows["tcps"] = _window("tcps", 2000, 0.2)
    capacity_rows(
        report,
        windows,
        windows,
        nodes=50,
        schemes=["grpcs", "tcps"],
        metrics=MetricsCost("grpcs", on=on, off=off, counted=5000.0),
    )
    return report


def test_metrics_cost_is_relay_cpu_per_call_on_over_off_across_all_their_windows() -> None:
    # 0.3 s + 0.1 s over 4000 calls on (100 us), 0.2 s + 0.2 s over 4000 off (100 us)...
    on = [_window("grpcs", 1000, 0.11), _window("grpcs", 3000, 0.31)]
    off = [_window("grpcs, metrics off", 2000, 0.2), _window("grpcs, metrics off", 2000, 0.2)]
    report = _capacity_report(on, off)
    row = report.rows[-1]
    assert row.key == "capacity.metrics_cost.relay_cpu_per_call"
    assert (row.step, row.unit, row.target) == ("4 capacity", "us", METRICS_COST)
    assert row.figures["grpcs"].direct == pytest.approx(100.0)  # off
    assert row.figures["grpcs"].gateway == pytest.approx(105.0)  # on: 0.42 s / 4000
    assert row.figures["grpcs"].ratio == pytest.approx(1.05)
    assert METRICS_COST.met(row.figures["grpcs"]) is True
    # Another transport has no metrics-off pair: its metrics-on figure, no ratio.
    assert row.figures["tcps"].direct is None
    assert row.figures["tcps"].gateway == pytest.approx(100.0)
    assert METRICS_COST.met(row.figures["tcps"]) is None
    # The relay CPU row is the first metrics-on window alone, as for every transport.
    relay = next(r for r in report.rows if r.key == "capacity.relay_cpu_per_call")
    assert relay.figures["grpcs"].gateway == pytest.approx(110.0)
    assert report.missing() == []


def test_metrics_cost_over_the_target_is_missed_in_the_table_and_json() -> None:
    on = [_window("grpcs", 1000, 0.106)]
    off = [_window("grpcs, metrics off", 1000, 0.1)]
    report = _capacity_report(on, off)
    lines = [line for line in table_rows(report) if "metrics on vs off" in line[1]]
    assert lines == [
        (
            "4 capacity",
            "relay CPU per call, constant answers, metrics on vs off "
            "(direct = metrics off, grpcs only)",
            "us",
            "grpcs",
            "100",
            "106",
            "1.06x",
            "",
            "<= 1.05x off: MISSED",
        )
    ]
    assert [line[3:] for line in table_rows(report)][-1] == (
        "tcps",
        "-",
        "100",
        "-",
        "",
        "<= 1.05x off: ?",
    )
    payload = json.loads(json.dumps(to_json(report)))
    row = next(r for r in payload["rows"] if r["key"].startswith("capacity.metrics_cost"))
    assert row["target"] == {"kind": "ratio_max", "value": 1.05, "text": "<= 1.05x off"}
    assert row["results"]["grpcs"]["ratio"] == pytest.approx(1.06)
    assert row["results"]["grpcs"]["target_met"] is False
    # What the end-to-end test asks of every row: every transport, None only for CPU rows.
    assert set(row["results"]) == {"grpcs", "tcps"}
    assert "cpu" in row["key"]


def test_each_transport_has_the_goal_of_the_issue_for_cpu_per_call_and_calls_per_second() -> None:
    report = _capacity_report([_window("grpcs", 1000, 0.3)], [_window("grpcs", 1000, 0.3)])
    relay = next(r for r in report.rows if r.key == "capacity.relay_cpu_per_call")
    site = next(r for r in report.rows if r.key == "capacity.site_cpu_per_call")
    assert (relay.target_for("grpcs"), relay.target_for("tcps")) == (
        RELAY_CPU["grpcs"],
        RELAY_CPU["tcps"],
    )
    assert RELAY_CPU["tcps"].text == "<= 250 us"
    assert site.target_for("tcps") == SITE_CPU["tcps"]
    assert SITE_CPU["tcps"].text == "<= 121 us (half of 242)"
    rates = {r.key: r for r in report.rows if r.key.endswith("calls_per_second")}
    assert rates["capacity.relay_only.calls_per_second"].target_for("tcps") == CAPACITY_RATE
    assert rates["capacity.relay_only.calls_per_second"].target_for("grpcs") is None
    assert rates["capacity.calls_per_second"].target_for("tcps") is None  # the SuperLink paces it
    lines = [line for line in table_rows(report) if line[3] == "tcps"]
    shown = [(line[5], line[8]) for line in lines]
    assert {("100", "<= 250 us: met"), ("250", "<= 121 us (half of 242): MISSED")} <= set(shown)


def test_quick_whole_runs_over_the_first_transport_mark_the_others_full_bench_only() -> None:
    report = BenchReport(quick=True, flower_version="1.41.0", transports=["grpcs", "tcps"])
    runs = [WholeRun("direct", 30.0, 1, 1), WholeRun("grpcs", 31.0, 1, 1)]
    run_rows(report, runs, RunKnobs(1, 1, 0.0), together=True)
    [row] = report.rows
    assert (row.schemes, row.not_measured) == (("grpcs",), {"tcps": "full bench only"})
    assert report.missing() == []
    assert [line[3:] for line in table_rows(report)] == [
        ("grpcs", "30.0", "31.0", "1.03x", "+1.00", "<= 1.05x direct: met"),
        ("tcps", "-", "full bench only", "-", "", "<= 1.05x direct"),
    ]
    payload = json.loads(json.dumps(to_json(report)))
    assert payload["rows"][0]["transports"] == ["grpcs"]
    assert payload["rows"][0]["not_measured"] == {"tcps": "full bench only"}


def test_the_relay_count_of_calls_is_read_from_its_metrics_text() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    calls = Counter(
        RELAY_CALLS.removesuffix("_total"),
        "calls",
        ["job_id", "site", "method", "status"],
        registry=registry,
    )
    calls.labels("bench-stub", "bench-site", "PullMessages", "200").inc(600)
    calls.labels("bench-stub", "bench-site", "SendNodeHeartbeat", "200").inc(100)
    calls.labels("bench", "bench-site", "PullMessages", "200").inc(5)
    calls.labels('odd "job"\\', "bench-site", "PullMessages", "200").inc(7)
    text = generate_latest(registry).decode()
    assert counted_calls(text, RELAY_CALLS, job_id="bench-stub") == 700.0
    assert counted_calls(text, RELAY_CALLS, job_id="bench") == 5.0
    assert counted_calls(text, RELAY_CALLS, job_id='odd "job"\\') == 7.0
    assert counted_calls(text, RELAY_CALLS, job_id="bench-stub", method="PullMessages") == 600.0
    assert counted_calls(text, RELAY_CALLS) == 712.0
    assert counted_calls(text, RELAY_CALLS, job_id="nobody") == 0.0
    assert counted_calls(text, RELAY_CALLS, job="bench-stub") == 0.0  # not the label
    assert counted_calls(text, "flgate_other_total", job_id="bench-stub") == 0.0
