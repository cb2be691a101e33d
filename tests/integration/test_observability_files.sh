#!/bin/sh
# test_observability_files - the Prometheus config, alert rules and Grafana
# dashboards are valid, and query only metrics the code exports.
#
#   1. promtool check config ops/prometheus.yml (also loads alerts.yml)
#   2. promtool check rules ops/alerts.yml
#   3. promtool test rules tests/integration/alerts_test.yml: the alerts fire
#      (and stay quiet) on synthetic series as intended
#   4. every metric name in grafana/dashboards/*.json and ops/alerts.yml is
#      listed in ops/metrics-exported.txt, the list that another test checks
#      against real /metrics output; dashboards use the provisioned
#      datasource uid.
#
# Needs promtool (Debian package prometheus) and python3. Exits non-zero and
# says why on any failure.
set -eu

SRC=${POSTCHI_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PROMTOOL=${PROMTOOL:-promtool}
cd "$SRC"

fail() {
    echo "test_observability_files: FAIL: $*" >&2
    exit 1
}

command -v "$PROMTOOL" >/dev/null 2>&1 || fail "promtool not found (install the prometheus package)"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"

"$PROMTOOL" check config ops/prometheus.yml || fail "promtool check config ops/prometheus.yml"
"$PROMTOOL" check rules ops/alerts.yml || fail "promtool check rules ops/alerts.yml"
"$PROMTOOL" test rules tests/integration/alerts_test.yml ||
    fail "promtool test rules tests/integration/alerts_test.yml"

python3 - <<'PYEOF' || fail "metric names or dashboards (see above)"
import glob
import json
import re
import sys

LIST = "ops/metrics-exported.txt"
ALERTS = "ops/alerts.yml"
DATASOURCES = "grafana/provisioning/datasources/prometheus.yml"
# Series Prometheus itself makes for every target; alerts may use them,
# dashboards may not (every panel must show something the code exports).
SYNTHETIC = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "start", "end"}
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

problems = []

def metric_names(expr):
    """Metric names used by a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)                                # $__rate_interval
    s = re.sub(r"\{[^}]*\}", " ", s)                                          # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                                         # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d+(\.\d*)?([eE][+-]?\d+)?(ms|s|m|h|d|w|y)?(?![\w:])", " ", s)
    names = []
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        word = m.group(0)
        if word.lower() in KEYWORDS or re.match(r"\s*\(", s[m.end():]):
            continue  # a keyword or a function name
        names.append(word)
    return names

# The extractor must find what it should, or the check below proves nothing.
assert metric_names('sum by (reason) (rate(postchi_x_total{a="b",c=~"d.*"}[5m])) > 0') == ["postchi_x_total"]
assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval])))") == ["a_bucket"]
assert metric_names("b < scalar(count(up{job=\"w\"})) or absent(c) * 1e3 offset 5m") == ["b", "up", "c"]

exported = []
with open(LIST) as f:
    for lineno, line in enumerate(f, 1):
        name = line.strip()
        if not name:
            continue
        if not NAME_RE.match(name) or not name.startswith("postchi_"):
            problems.append(f"{LIST}:{lineno}: not a postchi_ metric name: {name!r}")
        if name in exported:
            problems.append(f"{LIST}:{lineno}: {name} listed twice")
        exported.append(name)
exported = set(exported)

def known(name, allow_synthetic):
    if name in exported or (allow_synthetic and name in SYNTHETIC):
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        # Counters end in _total and are never histograms.
        if name.endswith(suffix) and base in exported and not base.endswith("_total"):
            return True
    return False

def check_expr(where, expr, allow_synthetic):
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric found in {expr!r}")
    for name in names:
        if not known(name, allow_synthetic):
            problems.append(f"{where}: {name} is not in {LIST} (expr {expr!r})")

# Alert rules: a small reader for "expr:" keys, one-line or block scalars.
with open(ALERTS) as f:
    lines = f.read().split("\n")
nrules = sum(1 for l in lines if re.match(r"\s*-\s*(alert|record):", l))
nexprs = 0
i = 0
while i < len(lines):
    m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
    i += 1
    if not m:
        continue
    nexprs += 1
    indent, value = len(m.group(1)), m.group(2).strip()
    where = f"{ALERTS}:{i}"
    if value[:1] in ("|", ">"):
        body = []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        value = "\n".join(body)
    elif value[:1] in ("'", '"'):
        value = value[1:-1]
    check_expr(where, value, True)
if nrules == 0 or nexprs != nrules:
    problems.append(f"{ALERTS}: found {nrules} rules but {nexprs} expr keys")

# Dashboards.
with open(DATASOURCES) as f:
    uids = re.findall(r"^\s*uid:\s*\"?([\w.-]+)\"?\s*$", f.read(), re.M)
if len(uids) != 1:
    problems.append(f"{DATASOURCES}: expected one datasource uid, found {uids}")

dashboards = sorted(glob.glob("grafana/dashboards/*.json"))
if not dashboards:
    problems.append("no dashboards in grafana/dashboards")
for path in dashboards:
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"{path}: {e}")
        continue
    for key in ("uid", "title", "panels"):
        if not dash.get(key):
            problems.append(f"{path}: no {key}")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # inside collapsed rows
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"{path}: panel {p.get('title')!r}"
        ds = p.get("datasource") or {}
        if ds.get("uid") not in uids:
            problems.append(f"{where}: datasource uid {ds.get('uid')!r} is not the provisioned {uids}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            check_expr(where, t["expr"], False)
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            check_expr(f"{path}: variable {v.get('name')!r}", q, False)

for p in problems:
    print("  " + p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"ok: {len(dashboards)} dashboard(s) and {nrules} alert rule(s) use only the "
      f"{len(exported)} exported metrics")
PYEOF

echo "test_observability_files: ok"
