#!/usr/bin/env python3
"""Checks that keel-wal's rooms (its top-level modules and folders) import one another without
a cycle, and prints the graph. A room is a folder under wal/src (format, dir, writer, backend)
or a top-level file. References are `crate::<room>` paths anywhere in a file, and `super::`
paths that leave a room's folder are not used (rooms reach each other through `crate::`).
Tests (`#[cfg(test)]` modules) are skipped. Exit status 1 on a cycle."""
import os, re, sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "wal", "src")

def room_of(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first

def strip_tests(text):
    # Drops `#[cfg(test)] mod ... { ... }` blocks by brace matching.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)

def main():
    edges = defaultdict(set)
    rooms = set()
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            room = room_of(path)
            if room == "lib":
                continue
            rooms.add(room)
            text = strip_tests(open(path).read())
            text = re.sub(r"//[^\n]*", "", text)
            for target in re.findall(r"crate::(\w+)", text):
                if target != room and target not in ("Result",):
                    edges[room].add(target)
            for group in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
                for target in re.findall(r"(?:^|[,{\s])(\w+)(?=::|\s*[,}]|$)", group):
                    if target != room and os.path.exists(os.path.join(ROOT, target)) or \
                       os.path.exists(os.path.join(ROOT, target + ".rs")):
                        if target != room:
                            edges[room].add(target)
    # Names that are items re-exported at the crate root, not modules, are ignored.
    edges = {r: {t for t in ts if t in rooms} for r, ts in edges.items()}
    for room in sorted(rooms):
        print(f"{room:12} -> {', '.join(sorted(edges.get(room, ()))) or '-'}")
    # Cycle search.
    state, stack, cycles = {}, [], []
    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2
    for room in sorted(rooms):
        if room not in state:
            visit(room)
    if cycles:
        for cycle in cycles:
            print("cycle: " + " -> ".join(cycle))
        return 1
    print("no cycle between keel-wal's rooms")
    return 0

sys.exit(main())
