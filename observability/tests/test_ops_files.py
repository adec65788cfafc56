"""The operations files under deploy/observability/ checked against the code.

The alert rules (prometheus-alerts.yaml) and the Grafana dashboard (grafana-dashboard.json)
name metrics and labels in PromQL. Nothing in Prometheus or Grafana complains when a name is
wrong: the alert simply never fires and the panel stays empty. So every metric and label
they use is looked up in what /metrics really exposes: the metrics registered in
prometheus_client's registry (observability.metrics, django-prometheus), the state that
ProductStateCollector reads at scrape time from the test database, and the series Prometheus
adds itself (`up`). Every alert must link to an entry of docs/operations.md that exists.

With promtool installed (Debian: `apt-get install prometheus`), the rules and the example
configuration also pass `promtool check`, and prometheus-alerts.test.yaml proves that
alerts fire on synthetic series and stay quiet otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "deploy" / "observability"
RULES = OPS / "prometheus-alerts.yaml"
RULES_TEST = OPS / "prometheus-alerts.test.yaml"
PROMETHEUS_CONFIG = OPS / "prometheus.yml"
DASHBOARD = OPS / "grafana-dashboard.json"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Catalogue: metric (series) name -> the label names it carries.
Catalogue = dict[str, frozenset[str]]

# --- A small PromQL reader ------------------------------------------------------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time",
    "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
}  # fmt: skip
GROUPING = {"by", "without"}
MATCHING = {"on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,(){}@])
    """,
    re.VERBOSE,
)


@dataclass
class Selector:
    """One metric named in an expression, the labels its matchers use, where it stands."""

    name: str
    labels: set[str]
    position: int


@dataclass
class LabelClause:
    """`by`/`without` (every metric in `scope` must carry the labels) or `on`/`ignoring`/
    `group_left`/`group_right` (some metric in `scope` must)."""

    keyword: str
    labels: list[str]
    scope: tuple[int, int]


@dataclass
class Expression:
    selectors: list[Selector] = field(default_factory=list)
    clauses: list[LabelClause] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
    return tokens


def _label_list(tokens: list[tuple[str, str]], start: int) -> tuple[list[str], int]:
    """Labels in `( a, b )` at tokens[start]; returns them and the index after `)`."""
    if start >= len(tokens) or tokens[start][1] != "(":
        return [], start  # group_left without a list
    labels: list[str] = []
    index = start + 1
    while tokens[index][1] != ")":
        if tokens[index][0] == "ident":
            labels.append(tokens[index][1])
        index += 1
    return labels, index + 1


def parse(expr: str) -> Expression:
    """The metrics, matcher labels and grouping labels of one PromQL expression."""
    result = Expression()
    tokens = tokenize(expr)
    closing: dict[int, int] = {}
    opened: list[int] = []
    for index, (_, text) in enumerate(tokens):
        if text == "(":
            opened.append(index)
        elif text == ")":
            if not opened:
                opened.append(-1)  # reported below
                break
            closing[opened.pop()] = index
    if opened:
        result.errors.append("unbalanced parentheses")
        return result

    def enclosing(index: int) -> tuple[int, int]:
        groups = [(o, c) for o, c in closing.items() if o < index < c]
        return max(groups) if groups else (0, len(tokens))

    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind != "ident":
            index += 1
            continue
        if text in AGGREGATIONS and following in GROUPING:  # sum by (a) (expr)
            labels, after = _label_list(tokens, index + 2)
            result.clauses.append(LabelClause(following, labels, (after, closing[after])))
            index = after
        elif text in AGGREGATIONS and following == "(":  # sum (expr) by (a), or sum (expr)
            end = closing[index + 1]
            if end + 1 < len(tokens) and tokens[end + 1][1] in GROUPING:
                labels, _ = _label_list(tokens, end + 2)
                result.clauses.append(LabelClause(tokens[end + 1][1], labels, (index + 1, end)))
            index += 1
        elif text.lower() in KEYWORDS:  # and, or, unless, bool, ... (may precede a bracket)
            index += 1
        elif following == "(" and text not in MATCHING | GROUPING:
            if text not in FUNCTIONS:
                result.errors.append(f"unknown function {text}()")
            index += 1
        elif text in GROUPING:  # the postfix clause, already read with its aggregation
            index = _label_list(tokens, index + 1)[1]
        elif text in MATCHING:
            labels, after = _label_list(tokens, index + 1)
            result.clauses.append(LabelClause(text, labels, enclosing(index)))
            index = after
        else:  # a metric, with or without matchers
            selector = Selector(text, set(), index)
            index += 1
            if index < len(tokens) and tokens[index][1] == "{":
                index += 1
                while tokens[index][1] != "}":
                    if tokens[index][0] == "ident" and tokens[index + 1][1] in {
                        "=", "!=", "=~", "!~",
                    }:  # fmt: skip
                        selector.labels.add(tokens[index][1])
                    index += 1
                index += 1
            result.selectors.append(selector)
    return result


def problems_in(expr: str, catalogue: Catalogue, *, where: str) -> list[str]:
    """What in one expression is not in the catalogue: unknown metrics, unknown labels."""
    parsed = parse(expr)
    found = [f"{where}: {error}" for error in parsed.errors]
    for selector in parsed.selectors:
        if selector.name not in catalogue:
            found.append(f"{where}: no metric {selector.name}")
            continue
        for label in sorted(selector.labels - catalogue[selector.name]):
            found.append(f"{where}: {selector.name} has no label {label!r}")
    for clause in parsed.clauses:
        start, end = clause.scope
        inside = [
            catalogue[s.name]
            for s in parsed.selectors
            if start <= s.position <= end and s.name in catalogue
        ]
        for label in clause.labels:
            if clause.keyword in GROUPING:
                missing = not inside or not all(label in labels for labels in inside)
            else:
                missing = not any(label in labels for labels in inside)
            if missing:
                found.append(f"{where}: {clause.keyword} ({label}): not a label of its metrics")
    return found


# --- What /metrics exposes ------------------------------------------------------------------------

SUFFIXES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "counter": [("_total", ())],
    "gauge": [("", ())],
    "histogram": [("_bucket", ("le",)), ("_count", ()), ("_sum", ())],
    "summary": [("", ("quantile",)), ("_count", ()), ("_sum", ())],
    "info": [("_info", ())],
}


def registered_series() -> Catalogue:
    """Every series of the metrics recorded in processes, with its labels, read from the
    collectors registered in prometheus_client (the product's and django-prometheus's)."""
    import django_prometheus.cache.metrics
    import django_prometheus.db.metrics  # noqa: F401
    from django_prometheus.middleware import Metrics

    import observability.metrics  # noqa: F401
    from observability.collectors import ProductStateCollector

    Metrics.get_instance()  # django-prometheus registers its HTTP metrics on first use
    series: dict[str, frozenset[str]] = {}
    collectors: list[Collector] = list(REGISTRY._collector_to_names)
    for collector in collectors:
        if isinstance(collector, ProductStateCollector):
            continue  # read below, against the test database
        if isinstance(collector, MetricWrapperBase):
            labels = tuple(collector._labelnames)
            for family in collector.describe():
                for suffix, extra in SUFFIXES[family.type]:
                    series[family.name + suffix] = frozenset(labels + extra)
        else:  # process_*, python_*: described by their samples
            for family in collector.collect():
                for sample in family.samples:
                    series[sample.name] = frozenset(sample.labels)
    return series


def scrape_time_series(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Catalogue:
    """The series ProductStateCollector yields from the test database, as on a scrape."""
    from audit.services import audit_chain_verify
    from observability import collectors, health
    from observability.metrics import SCRAPE_TIME_METRICS

    audit_chain_verify()  # so that the verification gauges have a sample
    families = list(collectors.ProductStateCollector().collect())
    # Sources that need the production path's Redis: their own function, Redis answered here.
    settings.TASK_DISPATCH = "celery"
    monkeypatch.setattr(health, "workers_alive", lambda: 2)
    families += list(collectors.workers())

    series: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    unlisted = set(series) - set(SCRAPE_TIME_METRICS)
    assert not unlisted, f"scrape-time metrics missing from SCRAPE_TIME_METRICS: {unlisted}"
    catalogue = {name: frozenset(labels) for name, labels in series.items()}
    # Read only with a live Redis (the channel layer's drops): listed, labels none.
    for name in SCRAPE_TIME_METRICS:
        catalogue.setdefault(name, frozenset())
    return catalogue


def target_labels() -> frozenset[str]:
    """Labels Prometheus puts on every series of a target: job, instance and those the
    example configuration adds (static labels, relabelling)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    labels = {"job", "instance"}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            labels.update(static.get("labels", {}))
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") and not relabel["target_label"].startswith("__"):
                labels.add(relabel["target_label"])
    return frozenset(labels)


@pytest.fixture
def catalogue(db: None, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Catalogue:
    everything = registered_series() | scrape_time_series(monkeypatch, settings)
    everything["up"] = frozenset()
    common = target_labels()
    return {name: labels | common for name, labels in everything.items()}


# --- The files ------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}


def grafana_expr(expr: str, variables: set[str]) -> tuple[str, list[str]]:
    """The PromQL of a panel target with Grafana's variables put in, and unknown variables."""
    used = re.findall(r"\$\{?(\w+)", expr)
    unknown = [name for name in used if name not in variables | GRAFANA_BUILTINS]
    return re.sub(r"\$\{?\w+\}?", "5m", expr), unknown


# --- Static cross-checks: always run --------------------------------------------------------------


def test_every_metric_and_label_in_the_alert_rules_exists(catalogue: Catalogue) -> None:
    found: list[str] = []
    for rule in alert_rules():
        found += problems_in(rule["expr"], catalogue, where=rule.get("alert") or rule["record"])
    assert not found, "\n".join(found)


def test_every_metric_and_label_in_the_dashboard_exists(catalogue: Catalogue) -> None:
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    found: list[str] = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            expr, unknown = grafana_expr(target["expr"], variables)
            where = f"panel {panel['title']!r} {target['refId']}"
            found += [f"{where}: unknown variable ${name}" for name in unknown]
            found += problems_in(expr, catalogue, where=where)
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        assert match, f"variable {variable['name']}: expected label_values(metric, label)"
        metric, label = match.groups()
        if metric not in catalogue or label not in catalogue[metric]:
            found.append(f"variable {variable['name']}: {metric} has no label {label!r}")
    assert not found, "\n".join(found)


def test_the_alerts_cover_what_operations_must_hear_about() -> None:
    used = {selector.name for rule in alert_rules() for selector in parse(rule["expr"]).selectors}
    required = {
        "eai_chat_turns_total",  # chat error rate
        "eai_provider_calls_total",  # provider error rate
        "eai_chat_replies_swept_total",  # stuck replies
        "eai_chat_replies_in_flight",
        "eai_workers_alive",  # workers down
        "eai_llm_queue_length",  # queue backlog
        "eai_audit_last_checkpoint_age_seconds",  # checkpoint older than two intervals
        "eai_audit_last_verification_success",  # verification failed / never verified
        "eai_audit_last_verification_timestamp_seconds",  # verification stale
        "eai_budget_utilisation_max_ratio",  # budget near its limit
        "eai_provider_circuit_state",  # circuit open
        "eai_channel_layer_dropped_messages_total",
        "eai_metrics_source_up",
        "up",
    }
    assert required <= used, f"no alert uses {sorted(required - used)}"


def test_the_checkpoint_alert_waits_two_default_intervals() -> None:
    """The rule file cannot read settings: its threshold is 2 x the default interval."""
    from enterprise_ai import settings as project_settings

    default = 300
    source = (ROOT / "enterprise_ai" / "settings.py").read_text()
    assert f'env.int("AUDIT_CHECKPOINT_INTERVAL_SECONDS", {default},' in source
    assert project_settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS > 0
    (rule,) = [r for r in alert_rules() if r["alert"] == "EAIAuditCheckpointStale"]
    assert rule["expr"].strip().endswith(f"> {2 * default}")


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists() -> None:
    anchors = github_anchors(OPERATIONS_DOC.read_text())
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        path, _, anchor = annotations.get("runbook_url", "").partition("#")
        assert path == "docs/operations.md", f"{name}: runbook_url must point at operations.md"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), name


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model"]["definition"] == "label_values(eai_chat_turns_total, model)"
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        title = panel.get("title")
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"panel {title!r} overlaps another"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert title, f"panel {panel['id']} has no title"
        assert panel["datasource"] == source, title
        assert panel["targets"], f"panel {title!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"] == source, title
            assert target["expr"].strip(), title


def test_the_checker_reports_unknown_metrics_labels_and_functions() -> None:
    """The cross-check itself fails on a renamed metric, a wrong label or a typo."""
    catalogue: Catalogue = {
        "eai_chat_turns_total": frozenset({"model", "outcome", "job", "instance"}),
        "eai_workers_alive": frozenset({"job", "instance"}),
        "up": frozenset({"job", "instance"}),
    }
    good = (
        'sum by (model) (rate(eai_chat_turns_total{outcome=~"failed|x"}[5m])) > 0 '
        'and on () (absent(eai_workers_alive) and on () max(up{job="web"}) == 1) '
        "or (time() - max(eai_workers_alive offset 5m) > 2 * 86400)"
    )
    assert problems_in(good, catalogue, where="good") == []
    assert problems_in("rate(eai_chat_turn_total[5m])", catalogue, where="x") == [
        "x: no metric eai_chat_turn_total"
    ]
    assert problems_in('eai_chat_turns_total{state="x"}', catalogue, where="x") == [
        "x: eai_chat_turns_total has no label 'state'"
    ]
    assert problems_in("sum(eai_workers_alive) by (model)", catalogue, where="x") == [
        "x: by (model): not a label of its metrics"
    ]
    assert problems_in("max by (outcome) (eai_workers_alive)", catalogue, where="x") == [
        "x: by (outcome): not a label of its metrics"
    ]
    assert problems_in("a_bsent(up)", catalogue, where="x") == ["x: unknown function a_bsent()"]
    assert problems_in("sum(up))", catalogue, where="x") == ["x: unbalanced parentheses"]


def test_registered_series_are_named_as_exposed() -> None:
    """A counter is exposed with `_total`, a histogram as `_bucket` (with `le`), `_count`
    and `_sum`: the catalogue holds those names, never the bare family name."""
    series = registered_series()
    assert series["eai_chat_turns_total"] == {"model", "outcome"}
    assert "eai_chat_turns" not in series
    assert series["eai_chat_time_to_first_token_seconds_bucket"] == {"model", "le"}
    assert "eai_chat_time_to_first_token_seconds" not in series
    assert series["django_http_requests_latency_seconds_by_view_method_bucket"] == {
        "view",
        "method",
        "le",
    }


# --- promtool, when installed ---------------------------------------------------------------------


def test_alert_rules_config_and_dashboard_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is not installed (Debian: apt-get install prometheus); the rules and the "
            "dashboard were cross-checked against the code by the other tests in this module"
        )
    # The dashboard's queries, with Grafana's variables put in, as recording rules: promtool
    # then parses each one as Prometheus would.
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    queries = [
        {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
        for expr in [grafana_expr(target["expr"], variables)[0]]
    ]
    dashboard_rules = tmp_path / "dashboard-queries.yaml"
    dashboard_rules.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": queries}]}))
    for command in (
        ["check", "rules", str(RULES)],
        ["check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)],
        ["test", "rules", str(RULES_TEST)],
        ["check", "rules", "--lint=none", str(dashboard_rules)],
    ):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"
