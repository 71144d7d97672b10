"""Shared by the ops tests: the PromQL of the alert rules and the dashboard, and its metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ingest.core.config import REPO_ROOT

DEPLOY = Path(REPO_ROOT) / "deploy"
ALERTS = DEPLOY / "scada_alerts.yml"
ALERT_TESTS = DEPLOY / "scada_alerts_test.yml"
DASHBOARD = DEPLOY / "grafana_dashboard.json"

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "atan2",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords left out)."""
    s = _GRAFANA_VARS.sub("1m", expr)
    s = _STRINGS.sub('""', s)
    s = _MATCHERS.sub("", s)
    s = _RANGES.sub("", s)
    s = _GROUPING.sub("", s)
    return {m for m in _IDENT.findall(s) if m not in _KEYWORDS}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if "expr" in t]
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            q = q["query"] if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
            exprs.append(m.group(1) if m else q)
    return exprs


def used_metric_names(include_dashboard: bool = True) -> set[str]:
    names: set[str] = set()
    for r in alert_rules():
        names |= metric_names(r["expr"])
    if include_dashboard and DASHBOARD.exists():
        for e in dashboard_exprs():
            names |= metric_names(e)
    return names
