#!/usr/bin/env bash
# Size limits of the production Rust code (issue 30): no file over MAX_FILE lines and no
# function over MAX_FN lines. Production is every tracked .rs file outside conformance/,
# bench/, tests/ directories and tests.rs modules (inline `mod tests` blocks count in their
# file). Functions are found by a brace-counting scan (strings, chars and comments skipped).
# Prints each offender and exits 1 when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_FILE=${MAX_FILE:-600}
MAX_FN=${MAX_FN:-150}
# Over the file limit while another change splits them (netpol's policy, etcd-ipam's
# allocator): reported, not failed. Drop a name here when its split lands.
SIZE_ALLOW=${SIZE_ALLOW:-}
git ls-files -co --exclude-standard -- '*.rs' \
    | grep -Ev '^(conformance|bench)/|(^|/)tests/|(^|/)tests\.rs$|(^|/)benches/' \
    | MAX_FILE=$MAX_FILE MAX_FN=$MAX_FN SIZE_ALLOW=$SIZE_ALLOW python3 -c '
import os, re, sys

max_file, max_fn = int(os.environ["MAX_FILE"]), int(os.environ["MAX_FN"])
fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern(\s+\"[^\"]*\")?)\s+)*fn\s+(\w+)")

def code_only(line, state):
    """The line with strings, chars and comments blanked; state carries block comments
    and raw/normal strings across lines."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if state["block"]:
            if line.startswith("*/", i):
                state["block"] -= 1; i += 2
            elif line.startswith("/*", i):
                state["block"] += 1; i += 2
            else:
                i += 1
            continue
        if state["str"] is not None:
            end = state["str"]
            if end == "\"" and c == "\\":
                i += 2; continue
            if line.startswith(end, i):
                state["str"] = None; i += len(end)
            else:
                i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = 1; i += 2; continue
        m = re.match(r"b?r(#*)\"", line[i:])
        if m and (i == 0 or not (line[i-1].isalnum() or line[i-1] == "_")):
            state["str"] = "\"" + m.group(1); i += m.end(); continue
        if c == "\"":
            state["str"] = "\""; i += 1; continue
        if c == "\x27":
            m = re.match(r"\x27(\\.|[^\\\x27])\x27|\x27\\u\{[0-9a-fA-F]+\}\x27|\x27\\x[0-9a-fA-F]{2}\x27", line[i:])
            if m:
                i += m.end(); continue
        out.append(c); i += 1
    return "".join(out)

# Files another change in flight is splitting: reported, not failed. Remove when it lands.
allowed = set(os.environ.get("SIZE_ALLOW", "").split())
bad = 0
for path in sys.stdin.read().split():
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > max_file:
        if path in allowed:
            print(f"{path}: {len(lines)} lines (max {max_file}; allowed for now)")
        else:
            print(f"{path}: {len(lines)} lines (max {max_file})"); bad += 1
    state = {"block": 0, "str": None}
    depth, stack, pending = 0, [], None
    for no, raw in enumerate(lines, 1):
        code = code_only(raw, state)
        m = fn_re.match(code)
        if m:
            pending = (m.group(6), no)
        for c in code:
            if c == "{":
                depth += 1
                if pending:
                    stack.append((pending[0], pending[1], depth)); pending = None
            elif c == "}":
                if stack and stack[-1][2] == depth:
                    name, start, _ = stack.pop()
                    if no - start + 1 > max_fn:
                        print(f"{path}:{start}: fn {name} is {no - start + 1} lines (max {max_fn})"); bad += 1
                depth -= 1
        if pending and code.rstrip().endswith(";") and "{" not in code:
            pending = None  # a declaration without a body (trait method)
sys.exit(1 if bad else 0)
'
