"""`l7gate bpf ...` pieces that need no root: node resolution, JSON rows, table output,
argument parsing (the listing itself is tested as root in tests/integration)."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from agent import cmd_bpf
from agent.cli import build_parser
from policy.errors import RedirectError
from policy.types import Direction, L4Action, Proto
from redirect.maps import FqdnPortRule, FqdnRow


def test_node_from_flag_env_or_the_only_pinned_dir(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L7GATE_NODE", raising=False)
    assert cmd_bpf.resolve_node("n9", str(tmp_path)) == "n9"
    with pytest.raises(RedirectError, match="0 nodes"):
        cmd_bpf.resolve_node(None, str(tmp_path))
    (tmp_path / "node1").mkdir()
    assert cmd_bpf.resolve_node(None, str(tmp_path)) == "node1"
    (tmp_path / "node2").mkdir()
    with pytest.raises(RedirectError, match="2 nodes"):
        cmd_bpf.resolve_node(None, str(tmp_path))
    monkeypatch.setenv("L7GATE_NODE", "node2")
    assert cmd_bpf.resolve_node(None, str(tmp_path)) == "node2"
    monkeypatch.delenv("L7GATE_NODE")
    with pytest.raises(RedirectError, match="missing"):
        cmd_bpf.resolve_node(None, str(tmp_path / "missing"))


def test_rows_are_plain_json() -> None:
    row = FqdnRow(3, ipaddress.IPv4Address("1.2.3.4"),
                  (FqdnPortRule(Proto.TCP, 443, 443, L4Action.ALLOW),), 0, 7, "a.example.")
    assert cmd_bpf._jsonable(row) == {
        "endpoint_id": 3, "ip": "1.2.3.4", "expiry_ns": 0, "name_id": 7, "name": "a.example.",
        "ports": [{"proto": "TCP", "port_lo": 443, "port_hi": 443, "action": "ALLOW"}]}
    assert cmd_bpf._jsonable(Direction.EGRESS) == "egress"
    assert cmd_bpf._jsonable(ipaddress.IPv4Network("10.0.0.0/8")) == "10.0.0.0/8"


def test_table_output() -> None:
    out = io.StringIO()
    cmd_bpf._print_table([{"network": "10.0.0.1/32", "identity": 1001},
                          {"network": "0.0.0.0/0", "identity": 2}], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["NETWORK", "IDENTITY"]
    assert lines[1].split() == ["10.0.0.1/32", "1001"] and len(lines) == 3
    empty = io.StringIO()
    cmd_bpf._print_table([], empty)
    assert empty.getvalue() == "(no entries)\n"


def test_parser_accepts_the_contract_commands() -> None:
    parser = build_parser()
    for table in ("ipcache", "policy", "ct", "fqdn"):
        args = parser.parse_args(["bpf", table, "list", "--node", "node1", "-o", "json"])
        assert (args.table, args.node, args.output) == (table, "node1", "json")
    args = parser.parse_args(["bpf", "dump-source"])
    assert args.func is cmd_bpf._dump_source


def test_dump_source_prints_flags_and_every_file(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["bpf", "dump-source", "--node", "node7"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith('/* cflags: ') and '-DL7G_PIN_DIR="/sys/fs/bpf/l7gate/node7"' in out
    for name in ("l7g_codes.h", "l7g_maps.h", "from_endpoint.c", "to_endpoint.c",
                 "from_netdev.c"):
        assert f"/{name} ----" in out
