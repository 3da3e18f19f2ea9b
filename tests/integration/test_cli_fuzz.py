"""Bad input to every command: exit 2, one line on stderr that names the input, no traceback,
and nothing created or changed.

Every bug a user reports about a command's input becomes a row here. A row is
``(args, names)``: ``names`` must appear in the one line (it is how the user finds what to
fix). ``@file`` in an argument is a fixture in the working directory (see ``workdir``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum_trader.cli import app

pytestmark = pytest.mark.integration

# Common to every command that reads the config.
CONFIG_ROWS = [
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--config", "bad.yaml"], "bad.yaml"),
    (["--config", "unknown.yaml"], "riskk"),
    (["--bogus"], "--bogus"),
]

# Stored backtest runs in the working directory's reports/ (see ``workdir``).
RUN_A = "20240101T000000Z-aaaaaaaa"
RUN_B = "20240101T000000Z-bbbbbbbb"

# Common to every command that takes a plugin strategy (good.py and broken.py: see workdir).
STRATEGY_ROWS = [
    (["--strategy", "nosuch.py"], "nosuch.py"),
    (["--strategy", ""], "--strategy"),
    (["--strategy", "good.py:Nope"], "Nope"),
    (["--strategy", "broken.py"], "broken.py"),
    (["--strategy", "nosuchname"], "nosuchname"),
    (["--strategy", "nosuch.module:Cls"], "nosuch"),
    (["--strategy", "good.py", "--param", "window=0"], "window=0"),
    (["--strategy", "good.py", "--param", "window=abc"], "window=abc"),
    (["--strategy", "good.py", "--param", "windw=5"], "windw"),
    (["--strategy", "good.py", "--param", "window"], "window"),
    (["--param", "window=5"], "--param"),
]

ROWS: dict[str, list[tuple[list[str], str]]] = {
    "backtest": [
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--data", "no[such]/x[1].csv"], "no[such]/x[1].csv"),  # printed as is, not markup
        (["--data", "sample:DOGE"], "DOGE"),
        (["--chart", "out.gif"], "--chart"),
        (["--chart", "afile/x.png"], "afile"),
        (["--chart", "adir"], "adir"),
        (["--trades", "-1"], "--trades"),
        (["--data", "bars.csv", "--timeframe", "5m"], "5m"),
        (["--data", "bars.csv", "--timeframe", "1h"], "1h"),
        (["--data", "bars.csv", "--timeframe", "7m"], "7m"),
        (["--data", "sample:XRP", "--timeframe", "1h"], "1h"),
        (["--json", "true"], "true"),
        (["--config", "reports-file.yaml"], "afile"),
        (["--timerange", "2018"], "--timerange"),
        (["--timerange", "20180201-20180101"], "20180201-20180101"),
        (["--timerange", "20300101-"], "20300101-"),
        (["--timerange", "2018-13-01.."], "2018-13-01"),
        (["--report", "true"], "true"),
        *STRATEGY_ROWS,
        *CONFIG_ROWS,
    ],
    "backtest-compare": [
        ([], "RUN"),
        (["nosuch", "other"], "nosuch"),
        ([RUN_A], "at least two"),
        ([RUN_A, RUN_B], RUN_B),  # its result.json is not JSON
        ([RUN_A, "afile"], "afile"),
        (["2024", RUN_A], "ambiguous"),
        ([RUN_A, ""], "empty"),
        ([RUN_A, RUN_A, "--config", "reports-file.yaml"], "afile"),
        *[([RUN_A, RUN_A, *args], names) for args, names in CONFIG_ROWS],
    ],
    "reports": [
        (["extra"], "extra"),
        (["--json", "true"], "true"),
        (["--limit", "0"], "--limit"),
        (["--limit", "-1"], "--limit"),
        (["--config", "reports-file.yaml"], "afile"),
        *CONFIG_ROWS,
    ],
    "run": [
        (["--max-bars", "-5"], "--max-bars"),
        (["--max-bars", "0"], "--max-bars"),
        (["--speed", "-1"], "--speed"),
        (["--speed", "0"], "--speed"),
        (["--state-dir", "afile"], "afile"),
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--data", "notparquet.parquet"], "notparquet.parquet"),
        (["--fresh", "true"], "true"),
        (["--yes", "true"], "true"),
        *STRATEGY_ROWS,
        # --live: the dry run on a venue's market data (@sim: our simulator on loopback)
        (["--live"], "exchange.base_url"),  # kind simulated and no simulator named
        (["--live", "--config", "unreachable.yaml"], "exchange.base_url"),
        (["--live", "--config", "sim.yaml", "--symbol", "NOPEUSDT"], "NOPEUSDT"),
        (["--live", "--config", "sim-notlisted.yaml"], "DOGEUSDT"),
        (["--live", "--config", "sim-1h.yaml"], "data.timeframe"),
        (["--live", "--symbol", "xrp/usdt"], "xrp/usdt"),
        (["--live", "--duration", "0"], "--duration"),
        (["--live", "--duration", "-3"], "--duration"),
        (["--live", "--data", "sample:XRP"], "--data"),
        (["--live", "--speed", "2"], "--speed"),
        (["--symbol", "XRPUSDT"], "--symbol"),  # without --live
        (["--duration", "5"], "--duration"),
        *CONFIG_ROWS,
    ],
    "parity": [
        ([], "no store"),
        (["--state-dir", "afile"], "afile"),
        (["--state-dir", "nodir"], "nodir"),
        (["--since", "garbage"], "garbage"),
        (["--json", "true"], "true"),
        (["extra"], "extra"),
        *CONFIG_ROWS,
    ],
    "state": [
        ([], "no store"),
        (["--state-dir", "afile"], "afile"),
        (["--state-dir", "nodir"], "nodir"),
        (["--json", "true"], "true"),
        (["extra"], "extra"),
        *CONFIG_ROWS,
    ],
    "state resume": [
        ([], "no store"),
        (["--reason", "  "], "--reason"),
        (["--state-dir", "nodir"], "nodir"),
        (["--yes", "no"], "no"),
        (["--keep-peak", "1"], "1"),
        *CONFIG_ROWS,
    ],
    "lookahead": [
        (["--warmup", "-1"], "--warmup"),
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--data", "bars.csv@XRPUSDT", "--warmup", "100"], "--warmup"),
        (["--data", "sample:XRP", "--timeframe", "1h"], "1h"),
        (["--json", "true"], "true"),
        *STRATEGY_ROWS,
        *CONFIG_ROWS,
    ],
    "new-strategy": [
        ([], "NAME"),
        (["9lives"], "9lives"),
        (["my strategy"], "my strategy"),
        (["good"], "good.py"),  # never overwrites
        (["fine", "--dir", "afile"], "afile"),
        (["fine", "--dir", "afile/sub"], "afile"),
        (["fine", "extra"], "extra"),
    ],
    "trades": [
        ([], "no store"),
        (["--limit", "-1"], "--limit"),
        (["--limit", "0"], "--limit"),
        (["--state-dir", "afile"], "afile"),
        (["--state-dir", "nodir"], "nodir"),
        *CONFIG_ROWS,
    ],
    "train": [
        (["--folds", "0"], "--folds"),
        (["--folds", "-3"], "--folds"),
        (["--kind", "xgb"], "kind"),
        (["--seed", "-1"], "--seed"),
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--data", "sample:XRP", "--timeframe", "1h"], "1h"),
        (["--data", "bars.csv", "--timeframe", "5m"], "5m"),
        (["--config", "registry-file.yaml"], "afile"),
        (["--data", "sample:XRP", "--data", "sample:XRP"], "XRPUSDT"),
        (["--per-symbol", "yes"], "yes"),
        (["--timerange", "x-y"], "--timerange"),
        (["--timerange", "-20000101"], "-20000101"),
        *CONFIG_ROWS,
    ],
    "models list": [(["extra"], "extra"), (["--json", "yes"], "yes"), *CONFIG_ROWS],
    "models show": [(["v404"], "v404"), (["--model", "nomodel"], "nomodel"),
                    (["a", "b"], "b"), *CONFIG_ROWS],
    "models promote": [([], "VERSION"), (["v404"], "v404"), (["v1", "v2"], "v2"),
                       *[(["v1", *args], names) for args, names in CONFIG_ROWS]],
    "models rollback": [([], "default"), (["--model", "nomodel"], "nomodel"),
                        (["extra"], "extra"), *CONFIG_ROWS],
    "serve": [
        ([], "SERVICE"),
        (["nosuch"], "nosuch"),
        (["gateway", "--port", "0"], "--port"),
        (["gateway", "--port", "70000"], "--port"),
        (["gateway", "--port", "@busy"], "in use"),
        *[(["gateway", *args], names) for args, names in CONFIG_ROWS],
    ],
    "up": [
        (["--only", "nosuch"], "nosuch"),
        (["--only", "gateway", "--config", "busy.yaml"], "in use"),
        (["extra"], "extra"),
        *CONFIG_ROWS,
    ],
    "status": [(["--json", "true"], "true"), (["extra"], "extra"), *CONFIG_ROWS],
    "config": [(["extra"], "extra"), (["--json"], "--json"), *CONFIG_ROWS],
    "db upgrade": [
        (["--url", "nonsense"], "URL"),
        (["--url", "sqlite:///afile/x.db"], "afile"),
        (["extra"], "extra"),
        *CONFIG_ROWS,
    ],
    "backup": [
        (["--dest", "afile"], "afile"),
        (["--key-file", "missing.key"], "missing.key"),
        (["--policy", "garbage"], "garbage"),
        (["--offsite", "ftp://host/x"], "ftp://host/x"),
        (["--redis", "--dest", "bk"], "--redis"),
        *CONFIG_ROWS,
    ],
    "backup verify": [
        (["nosuchset", "--dest", "bk"], "nosuchset"),
        (["--dest", "afile"], "afile"),
        (["latest", "--dest", "bk"], "bk"),
        (["a", "b"], "b"),
        *CONFIG_ROWS,
    ],
    "backup list": [
        (["--dest", "afile"], "afile"),
        (["--offsite", "ftp://host/x"], "ftp://host/x"),
        (["--json", "true"], "true"),
        *CONFIG_ROWS,
    ],
    "backup prune": [
        (["--policy", "garbage"], "garbage"),
        (["--policy", "6h:0d"], "6h:0d"),
        (["--dest", "afile"], "afile"),
        (["--offsite", "ftp://host/x"], "ftp://host/x"),
        *CONFIG_ROWS,
    ],
    "backup keygen": [
        ([], "PATH"),
        (["afile"], "afile"),
        (["afile/x.key"], "afile"),
        (["adir"], "adir"),
        (["k.key", "extra"], "extra"),
    ],
    "restore": [
        ([], "SET"),
        (["nosuchset", "--dest", "bk"], "nosuchset"),
        (["latest", "--dest", "bk"], "bk"),
        (["latest", "--from-offsite", "ftp://host/x"], "ftp://host/x"),
        (["latest", "--key-file", "missing.key", "--dest", "bk"], "bk"),
        *[(["latest", *args], names) for args, names in CONFIG_ROWS],
    ],
    "exchange-sim": [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--port", "@busy"], "in use"),
        (["--fault-rate", "2"], "--fault-rate"),
        (["--balance", "-5"], "--balance"),
        (["--bar-seconds", "-1"], "--bar-seconds"),
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--weight-limit", "0"], "--weight-limit"),
    ],
    "data download": [
        ([], "--symbol"),
        (["--symbol", "XRPUSDT", "--timeframe", "7m"], "7m"),
        (["--symbol", "XRPUSDT", "--since", "garbage"], "garbage"),
        (["--symbol", "XRPUSDT", "--since", "2024-02-01", "--until", "2024-01-01"],
         "--until"),
        (["--symbol", "XRPUSDT", "--mode", "nosuch"], "nosuch"),
        (["--symbol", "XRPUSDT", "--out", "x.csv"], "x.csv"),
        (["--symbol", "XRPUSDT", "--out", "notparquet.parquet"], "notparquet.parquet"),
        (["--symbol", "XRPUSDT", "--out", "afile/x.parquet"], "afile"),
    ],
    "data pairs": [
        (["--top", "0"], "--top"),
        (["--min-volume", "-1"], "--min-volume"),
        (["--mode", "paper"], "paper"),
        (["--quote", "US-DT"], "US-DT"),
        (["--json", "x"], "x"),
        (["extra"], "extra"),
    ],
    "token create": [
        ([], "--name"),
        (["--name", "ci"], "--scope"),
        (["--name", "ci", "--scope", "nosuch"], "nosuch"),
        (["--name", "ci", "--scope", "read", "--tokens-file", "afile/t.json"], "afile"),
        (["--name", "ci", "--scope", "read", "--tokens-file", "garbage.json"], "garbage.json"),
        *[(["--name", "ci", "--scope", "read", *args], names) for args, names in CONFIG_ROWS],
    ],
    "optimize": [
        (["--trials", "0"], "--trials"),
        (["--jobs", "0"], "--jobs"),
        (["--sampler", "cmaes"], "cmaes"),
        (["--objective", "alpha"], "alpha"),
        (["--max-drawdown", "1.5"], "--max-drawdown"),
        (["--windows", "0"], "--windows"),
        (["--slices", "3"], "--slices"),
        (["--mode", "rolling"], "--train-bars"),
        (["--mode", "sideways"], "sideways"),
        (["--study", "bad name/x"], "--study"),
        (["--storage", ""], "--storage"),
        (["--storage", "afile/journal.log"], "afile"),
        (["--space", "fast=30..3"], "fast=30..3"),
        (["--space", "nosuch=1..2"], "nosuch"),
        (["--space", "fast"], "fast"),
        (["--param", "fast=0"], "fast=0"),
        (["--data", "nosuch.csv"], "nosuch.csv"),
        (["--data", "sample:XRP", "--timeframe", "1h"], "1h"),
        (["--timerange", "20300101-"], "20300101-"),
        (["--windows", "2", "--purge", "100000"], "--purge"),
        (["--json", "true"], "true"),
        (["--config", "reports-file.yaml"], "afile"),
        *STRATEGY_ROWS,
        *CONFIG_ROWS,
    ],
    "optimize resume": [
        ([], "--storage"),
        (["--study", "s"], "--storage"),
        (["--storage", "nosuch.log"], "--study"),
        (["--storage", "nosuch.log", "--study", "s"], "nosuch.log"),
        (["--storage", "adir", "--study", "s"], "adir"),
        (["--storage", "", "--study", "s"], "--storage"),
        (["--storage", "nosuch.log", "--study", "bad/name"], "--study"),
        (["--storage", "nosuch.log", "--study", "s", "--jobs", "0"], "--jobs"),
        *[(["--storage", "nosuch.log", "--study", "s", *args], names)
          for args, names in CONFIG_ROWS],
    ],
    "optimize apply": [
        ([], "RESULT"),
        (["garbage.json"], "--config"),
        (["nosuch.json", "--config", "c.yaml"], "nosuch.json"),
        (["garbage.json", "--config", "c.yaml"], "garbage.json"),
        ([f"reports/{RUN_A}/result.json", "--config", "c.yaml"], RUN_A),
        (["garbage.json", "--config", "out.txt"], "--config"),
        (["garbage.json", "--config", "afile/x.yaml"], "afile"),
        (["garbage.json", "--config", "adir"], "adir"),
        (["garbage.json", "--config", "c.yaml", "--max-pbo", "0"], "--max-pbo"),
        (["garbage.json", "--config", "c.yaml", "--min-dsr", "1.5"], "--min-dsr"),
        (["garbage.json", "--config", "c.yaml", "--bogus"], "--bogus"),
    ],
    "token list": [
        (["--tokens-file", "garbage.json"], "garbage.json"),
        (["--json", "true"], "true"),
        (["extra"], "extra"),
        *CONFIG_ROWS,
    ],
    "token revoke": [
        ([], "TOKEN"),
        (["nosuch", "--tokens-file", "garbage.json"], "garbage.json"),
        (["nosuch", "--tokens-file", "none.json"], "nosuch"),
        (["a", "b"], "b"),
        *[(["nosuch", *args], names) for args, names in CONFIG_ROWS],
    ],
}

CASES = [(cmd, args, names) for cmd, rows in ROWS.items() for args, names in rows]


def _bars_csv(step_ms: int, n: int = 60) -> str:
    rows = ["timestamp,open,high,low,close,volume"]
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % step_ms
    for i in range(n):
        p = 1.0 + 0.01 * (i % 7)
        rows.append(f"{t0 + i * step_ms},{p},{p + 0.02},{p - 0.02},{p + 0.01},100")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """Our Binance-compatible simulator on loopback (XRPUSDT, 30m), for ``run --live``."""
    from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series

    srv = SimServer(SimState(SimServerConfig(series=load_series(["sample:XRP"]),
                                             bar_seconds=0))).start()
    try:
        yield srv.url
    finally:
        srv.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


@pytest.fixture
def workdir(tmp_path: Path, busy_port: int, sim_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "bad.yaml").write_text("risk: [unclosed\n")
    (tmp_path / "unknown.yaml").write_text("riskk:\n  max_drawdown: 0.3\n")
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "bk").mkdir()
    (tmp_path / "bars.csv").write_text(_bars_csv(1_800_000))
    (tmp_path / "notparquet.parquet").write_text("this is not parquet\n")
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "reports-file.yaml").write_text("paths:\n  reports_dir: afile/reports\n")
    (tmp_path / "registry-file.yaml").write_text("paths:\n  registry_dir: afile/models\n")
    for run_id, result in ((RUN_A, f'{{"run_id": "{RUN_A}", "report": {{}}}}'),
                           (RUN_B, "{not json")):
        (tmp_path / "reports" / run_id).mkdir(parents=True)
        (tmp_path / "reports" / run_id / "result.json").write_text(result)
    (tmp_path / "good.py").write_text(
        "from quantum_trader.strategies import IntParam, Strategy\n\n\n"
        "class Good(Strategy):\n    window = IntParam(10, low=2, high=100)\n\n"
        "    def on_bar(self, bar):\n        return None\n")
    (tmp_path / "broken.py").write_text("from quantum_trader.strategies import Strategy\n\n"
                                        "class Half(Strategy)\n")  # a syntax error
    from quantum_trader.config import SERVICE_NAMES

    ports = dict.fromkeys(SERVICE_NAMES, busy_port)
    (tmp_path / "busy.yaml").write_text(
        "services:\n  ports:\n" + "".join(f"    {k}: {v}\n" for k, v in ports.items()))
    venue = "exchange:\n  kind: simulated\n  base_url: {}\n  symbols: [{}]\n"
    (tmp_path / "sim.yaml").write_text(venue.format(sim_url, "XRPUSDT"))
    (tmp_path / "sim-notlisted.yaml").write_text(venue.format(sim_url, "XRPUSDT, DOGEUSDT"))
    (tmp_path / "sim-1h.yaml").write_text(venue.format(sim_url, "XRPUSDT")
                                          + "data:\n  timeframe: 1h\n")
    (tmp_path / "unreachable.yaml").write_text(
        venue.format(f"http://127.0.0.1:{_closed_port()}", "XRPUSDT"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path, with each file's mtime and size (a directory's own mtime moves when a
    command only checks it can write there, which changes nothing)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            if p.is_file() else (0, 0) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("command", "args", "names"), CASES,
                         ids=[f"{c}:{' '.join(a) or '-'}" for c, a, _ in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(
        workdir: Path, busy_port: int, command: str, args: list[str], names: str) -> None:
    argv = [*command.split(), *(str(busy_port) if a == "@busy" else a for a in args)]
    before = _tree(workdir)
    env: dict[str, str | None] = {k: None for k in os.environ
                                  if k.startswith(("QT_", "QTRADER_", "QTBACKUP_"))}
    res = CliRunner().invoke(app, argv, env={**env, "COLUMNS": "80"})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, (argv, res.stdout, res.stderr, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert names.lower() in lines[0].lower(), (names, lines[0])
    assert _tree(workdir) == before


def test_the_table_covers_every_command_five_times() -> None:
    from typer.main import get_command

    def leaves(group: object, prefix: str = "") -> Iterator[str]:
        for name, cmd in getattr(group, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            sub = getattr(cmd, "commands", None)
            if sub:
                if getattr(cmd, "invoke_without_command", False):
                    yield path
                yield from leaves(cmd, path)
            else:
                yield path

    commands = set(leaves(get_command(app)))
    assert commands == set(ROWS)
    assert all(len(rows) >= 5 for rows in ROWS.values()), {
        c: len(r) for c, r in ROWS.items() if len(r) < 5}


def test_the_installed_entry_point_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The real process, not the test runner: what a user's terminal gets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"  # this tree's code, not an installed one
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-m", "quantum_trader", "run", "--speed", "-1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: --speed -1: must be more than 0 bars "
                                               "per second"]
    assert list(tmp_path.iterdir()) == []
