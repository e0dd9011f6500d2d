#!/usr/bin/env bash
# Size limits of the product sources (small files, short functions):
#   - no product source file over 600 lines (whole files, unit tests included): exits 1 if one is;
#   - functions over 80 lines are listed, as a worklist (they do not change the exit status).
#
# Product sources: wal/src, recovery/src, engine/src, raft/src, cli/src. Integration tests,
# benches and the fuzz targets may be longer. Functions inside `#[cfg(test)]` (or
# `#[cfg(all(test, ...))]`) items are not listed.
#
# The function scan is a rough brace match over the code with comments, strings and character
# literals blanked out: a function counts from its `fn` line to the line of its closing brace.
#
#   bash scripts/check-sizes.sh                    # the limits above
#   KEEL_MAX_FILE_LINES=500 KEEL_MAX_FN_LINES=60 bash scripts/check-sizes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - "${KEEL_MAX_FILE_LINES:-600}" "${KEEL_MAX_FN_LINES:-80}" \
  wal/src recovery/src engine/src raft/src cli/src <<'PY'
import os
import re
import sys

max_file, max_fn = int(sys.argv[1]), int(sys.argv[2])
roots = sys.argv[3:]


def blank(text):
    """The text with comments, strings and char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    keep = lambda s: "".join(c if c == "\n" else " " for c in s)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
        elif (raw := re.match(r'b?r(#*)"', text[i:i + 260])) and not (
            i and (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + raw.group(1)
            j = text.find(end, i + raw.end())
            j = n if j < 0 else j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}'), else a lifetime or label ('a).
            if text.startswith("\\", i + 1):
                j = text.find("'", i + 3) + 1 or n
            elif i + 2 < n and text[i + 2] == "'":
                j = i + 3
            else:
                out.append(c)
                i += 1
                continue
        else:
            out.append(c)
            i += 1
            continue
        out.append(keep(text[i:j]))
        i = j
    return "".join(out)


FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
TEST_CFG = re.compile(r"#\[cfg\(\s*(all\(\s*)?test\b")


def body_end(code, start):
    """Offset of the brace closing the body that follows `start`; None for a declaration."""
    depth, i, n = 0, start, len(code)
    while i < n:
        c = code[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0 and c == ";":
            return None
        elif depth == 0 and c == "{":
            break
        i += 1
    braces = 0
    while i < n:
        if code[i] == "{":
            braces += 1
        elif code[i] == "}":
            braces -= 1
            if braces == 0:
                return i
        i += 1
    return None


def item_end(code, start):
    """Offset of the end of the item after an attribute at `start` (its `;` or closing brace)."""
    i, n = code.find("]", start), len(code)
    while i < n and code[i] not in ";{":
        i += 1
    if i >= n or code[i] == ";":
        return i
    braces = 0
    while i < n:
        braces += {"{": 1, "}": -1}.get(code[i], 0)
        if braces == 0:
            return i
        i += 1
    return n


def scan(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    code = blank(text)
    line_of = lambda offset: code.count("\n", 0, offset) + 1
    tests = [(m.start(), item_end(code, m.start())) for m in TEST_CFG.finditer(code)]
    long_fns = []
    for m in FN.finditer(code):
        if any(a <= m.start() <= b for a, b in tests):
            continue
        end = body_end(code, m.end())
        if end is None:
            continue
        first, last = line_of(m.start()), line_of(end)
        if last - first + 1 > max_fn:
            long_fns.append((first, m.group(1), last - first + 1))
    return text.count("\n"), long_fns


files = sorted(
    os.path.join(d, name)
    for root in roots
    for d, _, names in os.walk(root)
    for name in names
    if name.endswith(".rs")
)
big_files, long_fns = [], []
for path in files:
    lines, fns = scan(path)
    if lines > max_file:
        big_files.append((path, lines))
    long_fns += [(path, *f) for f in fns]

print(f"product source files over {max_file} lines: {len(big_files)}")
for path, lines in big_files:
    print(f"  {path}: {lines} lines")
print(f"functions over {max_fn} lines (a worklist; not an error): {len(long_fns)}")
for path, line, name, lines in long_fns:
    print(f"  {path}:{line} fn {name}: {lines} lines")
sys.exit(1 if big_files else 0)
PY
