"""End to end: real services, the real Prometheus and Alertmanager binaries, a fake Telegram.

Three ``quantum-trader serve`` processes (gateway, risk-safety, ai-engine) run on a private
Redis and a SQLite store. Prometheus scrapes them every second with the production rule file
and Alertmanager routes with the production alertmanager.yml, each pointed at local ports and
with shorter timings (below). The test kills ai-engine, expects ServiceDown on the fake Telegram
within the configured time, restarts it, and expects the RESOLVED message; then it checks that
RedisDown inhibits ConsumerLagHigh. A second test checks the rules' and dashboards' metric
names against the services' live /metrics.

Binaries come from Debian (scripts/ensure-monitoring.sh installs them); missing ones fail the
test with that instruction, never skip it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.fake_telegram import FakeTelegram, alertmanager_config_for_fake
from tests.support.redis_server import RedisServer, free_port
from tests.unit.test_monitoring import exported_names, missing_metrics

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
SERVICES = ("gateway", "risk-safety", "ai-engine")
VICTIM = "ai-engine"
CHAT_ID = 777001

# The production pipeline with the waits shortened. Worst case from the kill to the message:
# a scrape (1 s) + an evaluation (1 s) + ServiceDown's `for` (3 s) + an evaluation (1 s)
# + Alertmanager's group_wait (1 s) = 7 s; the deadline leaves room for a loaded machine.
SCRAPE = "1s"
SERVICE_DOWN_FOR = "3s"
AM_TIMINGS = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}
FIRING_DEADLINE_S = 30.0
RESOLVED_DEADLINE_S = 30.0


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} is not installed: run `bash scripts/ensure-monitoring.sh`"
                " (apt-get install prometheus prometheus-alertmanager)", pytrace=False)


def _am_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class Procs:
    """Processes started by this test, stopped by pid at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, env=env)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted(self.root.glob("*.log")))


def wait_until(cond: Any, timeout: float, what: str, procs: Procs) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}\n"
                         f"{procs.logs()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private Redis and the services, started once for this module's tests."""
    tmp = tmp_path_factory.mktemp("alerting")
    procs = Procs(tmp)
    with RedisServer(tmp / "redis") as redis:
        ports = {s: free_port() for s in SERVICES}
        qt_config = _service_config(tmp, redis.url, ports)
        key = tmp / "hmac.key"
        key.write_text(secrets.token_hex(32))
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE": str(key)}
        st = Stack(tmp, procs, ports, qt_config, env)
        try:
            for name in SERVICES:
                st.serve(name)
            for name in SERVICES:
                wait_until(lambda n=name: st.healthy(n), 60, f"{name} answering /health", procs)
            yield st
        finally:
            procs.stop_all()


class Stack:
    def __init__(self, root: Path, procs: Procs, ports: dict[str, int], config: Path,
                 env: dict[str, str]) -> None:
        self.root, self.procs, self.ports, self.config, self.env = root, procs, ports, config, env

    def serve(self, name: str) -> None:
        self.procs.start(name, [sys.executable, "-m", "quantum_trader", "serve", name,
                                "--config", str(self.config)], self.env)

    def healthy(self, name: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[name]}/health",
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def _prometheus_config(tmp: Path, ports: dict[str, int], am_port: int) -> Path:
    """prometheus.yml and the rule file, retargeted at this test's processes."""
    cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE,
                         scrape_timeout=SCRAPE)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "quantum-trader"]
    job["scrape_interval"] = SCRAPE
    job["scrape_timeout"] = SCRAPE
    job.pop("authorization")  # the services allow 127.0.0.1 in security.metrics_allow
    job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[s]}"], "labels": {"service": s}}
                             for s in SERVICES]
    # No exporters run here: their jobs would only add RedisDown and friends.
    cfg["scrape_configs"] = [job]
    cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{am_port}"]
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    for src in (MONITORING / "rules").glob("*.yml"):
        rules = yaml.safe_load(src.read_text())
        for group in rules["groups"]:
            group["interval"] = SCRAPE
            for rule in group["rules"]:
                if rule.get("alert") in ("ServiceDown", "RiskSafetyDown"):
                    rule["for"] = SERVICE_DOWN_FOR
        (rules_dir / src.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    cfg["rule_files"] = [str(rules_dir / "*.yml")]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _service_config(tmp: Path, redis_url: str, ports: dict[str, int]) -> Path:
    db = tmp / "qt.db"
    url = f"sqlite+aiosqlite:///{db}"
    subprocess.run([sys.executable, "-m", "quantum_trader", "db", "upgrade", "--url", url],
                   check=True, capture_output=True, cwd=tmp)
    cfg = {
        "store": {"url": url},
        "strategy": {"kind": "ema_cross"},
        "paths": {"state_dir": str(tmp / "var"), "registry_dir": str(tmp / "models")},
        "services": {"bus": "redis", "redis_url": redis_url, "bus_namespace": "qtalert",
                     "ports": ports, "heartbeat_interval_s": 0.5},
        "security": {"metrics_allow": ["127.0.0.1/32"]},
    }
    path = tmp / "qt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _alerts_for(texts: list[str], status: str, alertname: str, service: str) -> list[str]:
    return [t for t in texts if status in t and alertname in t and f"service: {service}" in t]


def test_rules_and_dashboards_use_metrics_the_services_export(stack: Stack) -> None:
    """Every metric a rule or a Grafana panel uses appears on a live /metrics (or is an
    exporter's, listed in EXTERNAL_METRICS)."""
    exported: set[str] = set()
    for name in SERVICES:
        r = httpx.get(f"http://127.0.0.1:{stack.ports[name]}/metrics", timeout=5)
        assert r.status_code == 200, f"{name} /metrics: HTTP {r.status_code} {r.text[:200]}"
        exported |= exported_names(r.text)
    assert "service_health_status" in exported
    missing = missing_metrics(exported)
    assert not missing, (
        "rules or dashboards use metrics no service exports: "
        + "; ".join(f"{n} (in {', '.join(sorted(w))})" for n, w in sorted(missing.items())))


def test_service_down_reaches_telegram_and_resolves(stack: Stack) -> None:
    prometheus = _binary("prometheus")
    alertmanager = _binary("alertmanager", "prometheus-alertmanager")
    _binary("promtool")
    _binary("amtool")
    procs = stack.procs

    with FakeTelegram() as telegram:
        try:
            _kill_and_restart(stack, telegram, prometheus, alertmanager)
        finally:
            procs.stop("prometheus")
            procs.stop("alertmanager")


def _kill_and_restart(stack: Stack, telegram: FakeTelegram, prometheus: str,
                      alertmanager: str) -> None:
    tmp_path, procs, ports = stack.root, stack.procs, stack.ports
    # Alertmanager: the production routing, pointed at the fake Telegram.
    token_file = tmp_path / "telegram_bot_token"
    token_file.write_text(telegram.token + "\n")
    am_config = alertmanager_config_for_fake(
        MONITORING / "alertmanager" / "alertmanager.yml", telegram,
        tmp_path / "alertmanager.yml", chat_id=CHAT_ID, token_file=token_file,
        templates_dir=MONITORING / "alertmanager" / "templates", timings=AM_TIMINGS,
        inline_token=_am_version(alertmanager) < (0, 26))
    am_port = free_port()
    procs.start("alertmanager", [
        alertmanager, f"--config.file={am_config}", f"--storage.path={tmp_path / 'am'}",
        f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        "--log.level=warn"])

    prom_port = free_port()
    prom_config = _prometheus_config(tmp_path, ports, am_port)
    procs.start("prometheus", [
        prometheus, f"--config.file={prom_config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--storage.tsdb.retention.time=1h",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s",
        "--log.level=warn"])
    prom = f"http://127.0.0.1:{prom_port}"

    def targets_up() -> dict[str, float] | None:
        try:
            r = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="quantum-trader"}'},
                          timeout=2)
            result = r.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        values = {s["metric"]["service"]: float(s["value"][1]) for s in result}
        return values if len(values) == len(SERVICES) and all(values.values()) else None

    wait_until(targets_up, 45, "Prometheus scraping every service", procs)

    t_kill = time.monotonic()
    procs.kill(VICTIM)
    texts = telegram.wait_for(
        lambda ts: _alerts_for(ts, "FIRING", "ServiceDown", VICTIM), FIRING_DEADLINE_S,
        f"ServiceDown for {VICTIM}")
    firing_after = time.monotonic() - t_kill
    (message,) = _alerts_for(texts, "FIRING", "ServiceDown", VICTIM)
    assert "Service ai-engine is down" in message
    assert "runbook: docs/runbook.md#servicedown" in message
    assert "[critical]" in message
    sent = next(m for m in telegram.messages if m.text == message)
    assert sent.chat_id == str(CHAT_ID)
    assert sent.token == telegram.token
    assert sent.parse_mode == "HTML"
    # Only the killed service is reported (the others are DEGRADED at worst, not DOWN).
    assert all(f"service: {VICTIM}" in t for t in texts if "ServiceDown" in t), texts

    t_restart = time.monotonic()
    stack.serve(VICTIM)
    telegram.wait_for(lambda ts: _alerts_for(ts, "RESOLVED", "ServiceDown", VICTIM),
                      RESOLVED_DEADLINE_S, f"ServiceDown RESOLVED for {VICTIM}")
    resolved_after = time.monotonic() - t_restart

    # Inhibition, by the real Alertmanager: with RedisDown firing, the consumer lag it causes
    # stays off Telegram. The cause is posted first, as it happens in production (Redis goes
    # down, then lag builds up): Alertmanager's inhibitor learns about source alerts
    # asynchronously, so posting both in one request races it.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = [{"labels": {"alertname": name, "severity": sev, **extra},
               "annotations": {"summary": f"{name} (posted by the test)",
                               "description": "-", "runbook_url": "docs/runbook.md"},
               "startsAt": now}
              for name, sev, extra in (
                  ("RedisDown", "critical", {"job": "redis"}),
                  ("ConsumerLagHigh", "warning", {"stream": "signals", "group": "risk-safety"}))]
    r = httpx.post(f"http://127.0.0.1:{am_port}/api/v2/alerts", json=alerts[:1], timeout=5)
    assert r.status_code == 200, r.text
    telegram.wait_for(lambda ts: any("RedisDown" in t for t in ts), 20, "RedisDown")
    r = httpx.post(f"http://127.0.0.1:{am_port}/api/v2/alerts", json=alerts[1:], timeout=5)
    assert r.status_code == 200, r.text

    def lag_inhibited() -> bool:
        listed = httpx.get(f"http://127.0.0.1:{am_port}/api/v2/alerts",
                           params={"filter": 'alertname="ConsumerLagHigh"'}, timeout=5).json()
        return bool(listed) and all(a["status"]["state"] == "suppressed"
                                    and a["status"]["inhibitedBy"] for a in listed)

    wait_until(lag_inhibited, 10, "Alertmanager marking ConsumerLagHigh inhibited", procs)
    time.sleep(3)  # longer than group_wait: ConsumerLagHigh would have been sent by now
    assert not [t for t in telegram.texts() if "ConsumerLagHigh" in t], telegram.texts()
    # The control: once RedisDown resolves, the same ConsumerLagHigh does get through.
    alerts[0]["endsAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r = httpx.post(f"http://127.0.0.1:{am_port}/api/v2/alerts", json=alerts, timeout=5)
    assert r.status_code == 200, r.text
    telegram.wait_for(lambda ts: any("FIRING" in t and "ConsumerLagHigh" in t for t in ts), 20,
                      "ConsumerLagHigh once RedisDown resolved")

    print(f"ServiceDown on Telegram {firing_after:.1f}s after the kill; RESOLVED "
          f"{resolved_after:.1f}s after the restart\n--- firing message:\n{message}")
