#!/bin/sh
# test_openapi - api/openapi.json is a valid OpenAPI 3.1 document and says
# exactly what the API serves.
#
#   1. an independent validator accepts it: `redocly lint` (@redocly/cli,
#      installed into ops/tools/node_modules by ops/install-deps.sh) with the
#      rules in ops/redocly.yaml; errors fail, warnings are only printed;
#   2. the route tables in api/*.c (`const api_route_t api_routes_x[] =
#      {{"METHOD", "/path", handler, API_SCOPE_X, "name", flags}, ...}`) and
#      the document agree: the same (method, /api/v1 + path) pairs, each
#      operationId equal to the route's name, public routes (and only they)
#      without security, and the problem responses a route can give (401
#      when authenticated, 403 when scoped, 404 for a path with an id).
#      /healthz, /readyz, /metrics and /api/v1/openapi.json must be in the
#      document; they may be served outside the route tables.
#
# Needs node (20+), the validator and python3. Exits non-zero and lists
# every difference on failure.
set -eu

SRC=${POSTCHI_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$SRC"

fail() {
    echo "test_openapi: FAIL: $*" >&2
    exit 1
}

command -v python3 >/dev/null 2>&1 || fail "python3 not found"
command -v node >/dev/null 2>&1 || fail "node not found (run ops/install-deps.sh)"
REDOCLY=ops/tools/node_modules/@redocly/cli/bin/cli.js
[ -f "$REDOCLY" ] || fail "$REDOCLY not found (run ops/install-deps.sh)"
[ -f api/openapi.json ] || fail "api/openapi.json not found"

REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_COLOR=1 \
    node "$REDOCLY" lint --config ops/redocly.yaml --format stylish api/openapi.json ||
    fail "redocly lint found errors in api/openapi.json (see above)"

python3 - <<'PYEOF' || fail "route tables and api/openapi.json disagree (see above)"
import glob
import json
import re
import sys

PREFIX = "/api/v1"
OUTSIDE = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
           ("GET", PREFIX + "/openapi.json")}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
TABLE_RE = re.compile(r"\bapi_route_t\s+(api_routes_\w+)\s*\[\s*\]\s*=\s*\{(.*?)\n\s*\}\s*;", re.S)
ROW_RE = re.compile(r'\{\s*"([A-Z]+)"\s*,\s*"([^"]*)"\s*,\s*[A-Za-z_]\w*\s*,\s*(API_SCOPE_[A-Z]+)\s*,'
                    r'\s*"([^"]*)"\s*,')

def strip_comments(c):
    c = re.sub(r"/\*.*?\*/", " ", c, flags=re.S)
    return re.sub(r"//[^\n]*", " ", c)

def tables(text, where, problems):
    """(table, method, path, scope, name) rows of every route table in text."""
    rows = []
    for m in TABLE_RE.finditer(strip_comments(text)):
        body = m.group(2)
        found = ROW_RE.findall(body)
        # Every row that starts with a string must have been understood.
        starts = len(re.findall(r'\{\s*"', body))
        if starts != len(found):
            problems.append(f"{where}: {m.group(1)}: understood {len(found)} of {starts} rows")
        for method, path, scope, name in found:
            rows.append((m.group(1), method, path, scope, name))
    return rows

# The extractor must find what it should, or the comparison proves nothing.
_sample = '''
const api_route_t api_routes_x[] = {
    {"GET", "/x/{id}", s_get, API_SCOPE_READ, "x.get", 0}, /* {"GET", "/no"} */
    {"POST", "/x", s_create, API_SCOPE_FULL,
     "x.create", API_IDEMPOTENT | API_BATCH},
    {0},
};'''
_p = []
assert tables(_sample, "sample", _p) == [
    ("api_routes_x", "GET", "/x/{id}", "API_SCOPE_READ", "x.get"),
    ("api_routes_x", "POST", "/x", "API_SCOPE_FULL", "x.create")], tables(_sample, "s", [])
assert _p == []
_p = []
tables('const api_route_t api_routes_y[] = {\n {"GET", "/y", s_y, 3, "y"},\n {0},\n};', "bad", _p)
assert _p, "a row the pattern cannot read must be reported"

problems = []
routes = {}   # (method, full path) -> (name, scope, where)
names = {}
for path in sorted(glob.glob("api/*.c")):
    with open(path) as f:
        for table, method, rpath, scope, name in tables(f.read(), path, problems):
            where = f"{path}: {table}"
            key = (method, PREFIX + rpath)
            if method not in METHODS:
                problems.append(f"{where}: unknown method {method}")
            if not rpath.startswith("/"):
                problems.append(f"{where}: path {rpath!r} does not start with /")
            if key in routes:
                problems.append(f"{where}: {method} {rpath} also in {routes[key][2]}")
            if name in names:
                problems.append(f"{where}: name {name!r} also used by {names[name]}")
            routes[key] = (name, scope, where)
            names[name] = f"{method} {rpath}"
if not routes:
    problems.append("no route tables found in api/*.c")

with open("api/openapi.json") as f:
    doc = json.load(f)
ops = {}
for p, item in doc.get("paths", {}).items():
    for method, op in item.items():
        if method.upper() in METHODS:
            ops[(method.upper(), p)] = op

for key in sorted(set(routes) - set(ops)):
    name, _, where = routes[key]
    problems.append(f"{key[0]} {key[1]} ({name}, {where}) is not in api/openapi.json")
for key in sorted(set(ops) - set(routes) - OUTSIDE):
    problems.append(f"{key[0]} {key[1]} ({ops[key].get('operationId')}) is in api/openapi.json "
                    "but in no route table")
for key in sorted(OUTSIDE - set(ops)):
    problems.append(f"{key[0]} {key[1]} is missing from api/openapi.json")

for key in sorted(set(routes) & set(ops)):
    name, scope, where = routes[key]
    op = ops[key]
    what = f"{key[0]} {key[1]}"
    if op.get("operationId") != name:
        problems.append(f"{what}: operationId {op.get('operationId')!r}, route name {name!r} ({where})")
    public = scope == "API_SCOPE_PUBLIC"
    if public != (op.get("security") == []):
        problems.append(f"{what}: scope {scope} but the document "
                        f"{'requires' if public else 'does not require'} credentials")
    responses = op.get("responses", {})
    needed = []
    if not public:
        needed.append("401")
    if scope in ("API_SCOPE_SEND", "API_SCOPE_FULL", "API_SCOPE_USER"):
        needed.append("403")
    if "{" in key[1]:
        needed.append("404")
    if "requestBody" in op:
        needed += ["413", "415", "422"]
    for code in needed:
        if code not in responses:
            problems.append(f"{what}: no {code} response")
    if not any(c.startswith("2") for c in responses):
        problems.append(f"{what}: no 2xx response")

for p in problems:
    print("  " + p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"ok: {len(routes)} routes in the tables, {len(ops)} operations in api/openapi.json")
PYEOF

echo "test_openapi: ok"
