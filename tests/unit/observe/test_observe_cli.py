"""`l7gate observe` end to end through agent.cli.main: --input-file, the agent socket, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from observe.cli import parse_time
from observe.flow import Flow, FlowVerdict
from observe.ring import FlowRing

FLOWS_FILE = str(Path(__file__).with_name("flows.jsonl"))
SANDBOX_FLOWS_FILE = str(Path(__file__).with_name("flows_sandbox.jsonl"))
S = 1_000_000_000


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["observe", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(params=[FLOWS_FILE, SANDBOX_FLOWS_FILE], ids=["story", "sandbox"])
def flow_file(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def file_flows(flow_file: str) -> list[dict[str, Any]]:
    return [json.loads(line)["flow"] for line in Path(flow_file).read_text().splitlines()
            if line.startswith('{"flow"')]


def test_input_file_verdict_dropped_compact(capsys: Any, flow_file: str,
                                            file_flows: list[dict[str, Any]]) -> None:
    raw_flows = file_flows
    rc, out, err = run(capsys, "--input-file", flow_file, "--verdict", "DROPPED")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == sum(d["verdict"] == "DROPPED" for d in raw_flows)
    assert all(" DROPPED (" in line for line in lines)
    hit = [ln for ln in lines if "default/other" in ln and "default/my-api:8080" in ln
           and "DROPPED (POLICY_DENIED)" in ln]
    assert hit
    line = hit[0]
    assert line.index("default/other") < line.index("default/my-api:8080") < line.index(
        "DROPPED (POLICY_DENIED)")


def test_input_file_json_keeps_hubble_fields(capsys: Any, flow_file: str,
                                             file_flows: list[dict[str, Any]]) -> None:
    raw_flows = file_flows
    rc, out, _ = run(capsys, "--input-file", flow_file, "-o", "json", "--to-pod",
                     "default/my-api", "--protocol", "http")
    assert rc == 0
    objs = [json.loads(line) for line in out.splitlines()]
    want = [d for d in raw_flows if d.get("destination", {}).get("pod_name") == "my-api"
            and "http" in (d.get("l7") or {})]
    assert [o["flow"] for o in objs] == want
    assert want


def test_input_file_last_first_since(capsys: Any, flow_file: str,
                                     file_flows: list[dict[str, Any]]) -> None:
    raw_flows = file_flows
    rc, out, _ = run(capsys, "--input-file", flow_file, "-o", "json", "--last", "3")
    assert [json.loads(x)["flow"] for x in out.splitlines()] == raw_flows[-3:]
    rc, out, _ = run(capsys, "--input-file", flow_file, "-o", "json", "--first", "2")
    assert [json.loads(x)["flow"] for x in out.splitlines()] == raw_flows[:2]
    mid = raw_flows[len(raw_flows) // 2]["time"]
    rc, out, _ = run(capsys, "--input-file", flow_file, "-o", "json", "--since", mid)
    assert rc == 0
    assert [json.loads(x)["flow"] for x in out.splitlines()] == [
        d for d in raw_flows if Flow.from_json(d).time_ns >= Flow.from_json(
            {"time": mid, "verdict": "FORWARDED"}).time_ns]


def test_input_file_stdin_and_lost_events(capsys: Any, monkeypatch: pytest.MonkeyPatch,
                                          raw_flows: list[dict[str, Any]]) -> None:
    import io

    lines = [json.dumps({"flow": raw_flows[0]}),
             json.dumps({"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": 9,
                                         "first": "t1", "last": "t2"}}),
             json.dumps({"flow": raw_flows[1]})]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    rc, out, err = run(capsys, "--input-file", "-", "-o", "table")
    assert rc == 0
    assert len(out.splitlines()) == 3  # header + 2 rows
    assert "EVENTS LOST: 9 flows lost between t1 and t2" in err


@pytest.mark.parametrize("fmt", ["compact", "json", "jsonpb", "table", "dict"])
def test_every_format_runs(capsys: Any, fmt: str) -> None:
    rc, out, err = run(capsys, "--input-file", FLOWS_FILE, "-o", fmt, "--print-node-name")
    assert rc == 0 and out and err == ""


def test_bad_filter_value_exit_1(capsys: Any) -> None:
    rc, out, err = run(capsys, "--input-file", FLOWS_FILE, "--verdict", "MAYBE")
    assert rc == 1 and out == ""
    assert "--verdict" in err and len(err.splitlines()) == 1


def test_bad_input_file_exit_1(capsys: Any, tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("not json\n")
    rc, _, err = run(capsys, "--input-file", str(p))
    assert rc == 1 and "line 1" in err
    rc, _, err = run(capsys, "--input-file", str(tmp_path / "missing"))
    assert rc == 1 and "missing" in err


def test_agent_unreachable_exit_1_names_socket(capsys: Any, short_tmp: str) -> None:
    path = f"{short_tmp}/none.sock"
    rc, out, err = run(capsys, "--api-socket", path, "--verdict", "DROPPED")
    assert rc == 1 and out == ""
    assert path in err and len(err.splitlines()) == 1


def test_from_agent_socket(capsys: Any, api_server: Any, flows: list[Flow],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    ring = FlowRing(1000)
    for f in flows:
        ring.push(f)
    _, path = api_server(ring)
    monkeypatch.setenv("L7GATE_API_SOCKET", path)
    rc, out, err = run(capsys, "--verdict", "DROPPED", "--pod", "default/other", "-o", "json")
    assert rc == 0 and err == ""
    got = [Flow.from_json(json.loads(x)) for x in out.splitlines()]
    want = [f for f in flows if f.verdict is FlowVerdict.DROPPED
            and "other" in (f.source.pod_name, f.destination.pod_name)
            and "default" in (f.source.namespace, f.destination.namespace)]
    assert got == want and want
    rc, out, _ = run(capsys, "--api-socket", path, "--not", "--verdict", "FORWARDED",
                     "--last", "2")
    assert rc == 0 and len(out.splitlines()) == 2


def test_parse_time() -> None:
    now = 1_000_000 * S
    assert parse_time("5m", now) == now - 300 * S
    assert parse_time("1h30m", now) == now - 5400 * S
    assert parse_time("250ms", now) == now - S // 4
    assert parse_time("2026-11-26T13:23:47.852Z", now) == 1_795_699_427_852_000_000
    assert parse_time("2026-11-26T14:23:47+01:00", now) == 1_795_699_427 * S
    with pytest.raises(ValueError):
        parse_time("yesterday", now)
    with pytest.raises(ValueError):
        parse_time("5mx", now)


def test_input_file_accepts_hubble_exported_shape(capsys: Any, tmp_path: Path) -> None:
    # What `hubble observe -o json` writes: numeric event types, short fractions, extra fields.
    line = {"flow": {
        "time": "2026-11-26T13:23:47.852Z", "uuid": "x", "verdict": "DROPPED",
        "drop_reason": 133, "drop_reason_desc": "POLICY_DENIED",
        "event_type": {"type": 1, "sub_type": 133}, "Type": "L3_L4", "node_name": "kind/node2",
        "IP": {"source": "10.244.1.11", "destination": "10.244.2.10", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 51000, "destination_port": 8080, "flags": {"SYN": True}}},
        "source": {"ID": 102, "identity": 257, "namespace": "default", "pod_name": "other",
                   "labels": ["k8s:app=other"], "workloads": [{"name": "other", "kind": "Pod"}]},
        "destination": {"identity": 259, "namespace": "default", "pod_name": "my-api"},
        "traffic_direction": "INGRESS", "Summary": "TCP Flags: SYN"},
        "node_name": "kind/node2", "time": "2026-11-26T13:23:47.852Z"}
    p = tmp_path / "hubble.json"
    p.write_text(json.dumps(line) + "\n")
    rc, out, err = run(capsys, "--input-file", str(p), "--type", "drop", "--from-label",
                       "app=other")
    assert (rc, err) == (0, "")
    assert out == ("Nov 26 13:23:47.852: default/other:51000 -> default/my-api:8080 drop "
                   "DROPPED (POLICY_DENIED)\n")
