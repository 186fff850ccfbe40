"""``sharkcage tank``: the README's demo really shows the sharks and the cage.

The tank runs each scenario in child processes of its own; these tests run
the tank itself as a subprocess, on a fast subset (the stdlib sides that
hang cost one --timeout each, and they run side by side).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sharkcage.cli import tank
from sharkcage.cli._scenarios import SCENARIOS

pytestmark = pytest.mark.timeout(60)

# Stdlib errors, hangs and a wrong result, run side by side: ~one timeout in all.
FAST = ["mysql_exception", "killed_worker", "unpicklable_result", "lambda_spawn", "stateful_counter", "exit_in_task"]


def _tank(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sharkcage", "tank", *args],
        capture_output=True, text=True, timeout=50, cwd=cwd,
    )


def test_fast_subset_stdlib_bites_and_sharkcage_is_clean(tmp_path):
    proc = _tank("--only", ",".join(FAST), "--timeout", "5", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["scenarios"]}
    assert list(rows) == FAST  # the tank's order, every one asked for
    assert data["clean"] is True
    for name, row in rows.items():
        std, sk = row["stdlib"], row["sharkcage"]
        # the stdlib's bite: a hang or an error (the counter is silently wrong)
        bite = ("wrong",) if name == "stateful_counter" else ("hung", "error")
        assert std["outcome"] in bite, (name, std)
        assert sk["clean"], (name, sk)
        assert not sk["exit_hung"] and sk["leftovers"] == 0, (name, sk)
        if std["outcome"] == "hung":
            assert std["cell"] == "hung 5 s"
    # What the contract names, not just "something clean":
    assert rows["killed_worker"]["sharkcage"]["exc"] == "WorkerCrashedError"
    assert "RemoteError" in rows["mysql_exception"]["sharkcage"]["types"]
    assert "MySQLError" in rows["mysql_exception"]["sharkcage"]["types"]
    assert rows["unpicklable_result"]["sharkcage"]["exc"] == "SerializationError"
    assert rows["exit_in_task"]["sharkcage"]["cell"] == "error: SystemExit(3)"
    assert rows["lambda_spawn"]["stdlib"]["exc"] == "PicklingError"
    assert rows["lambda_spawn"]["sharkcage"]["outcome"] == "ok"
    assert rows["stateful_counter"]["stdlib"]["cell"] == "wrong result: parent count 0"
    assert rows["stateful_counter"]["sharkcage"]["outcome"] == "ok"


def test_table_output(tmp_path):
    proc = _tank("--only", "lambda_spawn", "--timeout", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["scenario", "stdlib", "time"]
    row = next(line for line in lines if line.startswith("lambda_spawn"))
    assert "error: PicklingError" in row and "caged" in row


def test_unknown_scenario_exits_2(tmp_path):
    proc = _tank("--only", "nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "killed_worker" in proc.stderr  # says what exists
    assert proc.stdout == ""


def test_select_keeps_tank_order_and_rejects_unknown():
    assert tank.select("exit_in_task,killed_worker") == ["killed_worker", "exit_in_task"]
    assert tank.select(None) == [s.name for s in SCENARIOS]
    with pytest.raises(ValueError, match="nope"):
        tank.select("killed_worker,nope")


def test_clean_means_the_promised_outcome():
    by = {s.name: s for s in SCENARIOS}
    timeout = by["hung_task"]
    ok = tank.SideResult("error", exc="TaskTimeoutError", types=["TaskTimeoutError", "SharkcageError"])
    assert tank.is_clean(timeout, ok)
    assert not tank.is_clean(timeout, tank.SideResult("hung", elapsed=5.0))
    assert not tank.is_clean(timeout, tank.SideResult("error", exc="ValueError", types=["ValueError"]))
    leaked = tank.SideResult("error", exc="TaskTimeoutError", types=["TaskTimeoutError"], leftovers=2)
    assert not tank.is_clean(timeout, leaked)
    assert tank.cell(tank.SideResult("hung", elapsed=5.0)) == "hung 5 s"
