#!/usr/bin/env python3
"""Reports import cycles between the files of host/src.

A file depends on another when it names an item of it: a `use crate::...`,
`use super::...` or `use self::...` tree, or a `crate::x::y` path in the code.
A path is resolved to the file of its longest module prefix; when that file
only re-exports the item (`pub use`), the path is followed to where the item
is defined, so a `mod.rs` that re-exports its children is no cycle by itself.
`mod x;` declarations are not dependencies, nor is a `pub use` re-export
unless the file's own code uses the name.

Every strongly connected set of files is a cycle, and is printed with one
example loop through it. Known cycles, to be broken later, are listed in
the allow-list (default scripts/import-cycles.allow) as the imports that
close them, one a line, `FROM -> TO` with paths relative to host/src (`#`
starts a comment): those imports are left out of the graph, so the cycle
they close is reported as known, and any other cycle still fails. An entry
that no longer closes a cycle is reported, to be removed.

Usage: scripts/check-import-cycles.py [--root host/src] [--allow FILE]
Exit status: 0 when every cycle is allowed, 1 otherwise, 2 for a bad allow-list.
"""

import argparse
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text):
    """The text with comments, strings and char literals blanked out."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif c == "r" and (m := re.match(r'r(#*)"', text[i:])) and not (
            i and re.match(r"[A-Za-z0-9_]", text[i - 1])
        ):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_use_tree(s):
    """The full paths of a use tree such as `a::{b, c::{d as e, self}}`."""
    s = re.sub(r"\s+as\s+" + IDENT, "", s)
    s = re.sub(r"\s+", "", s)
    paths = []

    def walk(prefix, tree):
        parts = split_top(tree)
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = part[:brace].rstrip(":")
                inner = part[brace + 1 : part.rfind("}")]
                walk(prefix + ([p for p in head.split("::") if p] if head else []), inner)
            else:
                segs = [p for p in part.split("::") if p]
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                paths.append(prefix + segs)

    walk([], s)
    return paths


def split_top(s):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


class Crate:
    def __init__(self, root):
        self.root = root
        self.files = {}  # module path tuple -> file path (relative to root)
        for dirpath, _, names in os.walk(root):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                parts = rel[:-3].split(os.sep)
                if parts == ["main"]:
                    continue  # the binary: another crate, which says `peregrine::`
                if parts == ["lib"]:
                    mod = ()
                elif parts[-1] == "mod":
                    mod = tuple(parts[:-1])
                else:
                    mod = tuple(parts)
                self.files[mod] = rel
        self.code = {}
        for mod, rel in self.files.items():
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                self.code[mod] = strip_code(f.read())
        # Inline modules (`mod tests { ... }`): their paths, mapped to the file.
        self.inline = {}
        self.reexports = {mod: {} for mod in self.files}
        self.refs = {mod: [] for mod in self.files}
        for mod in self.files:
            self.scan(mod)

    def scan(self, mod):
        code = self.code[mod]
        # Where each inline `mod name {` starts and ends, for `super`/`self`.
        spans = []
        for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", code):
            depth, j = 1, m.end()
            while j < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
            spans.append((m.start(), j, m.group(1)))

        def scope_at(pos):
            inner = [name for (a, b, name) in spans if a <= pos < b]
            return mod + tuple(inner)

        use_spans, reexported = [], []
        for m in re.finditer(r"\b(pub(\s*\([^)]*\))?\s+)?use\s+([^;]+);", code):
            use_spans.append((m.start(), m.end()))
            public = m.group(1) is not None
            scope = scope_at(m.start())
            for path in parse_use_tree(m.group(3)):
                full = self.absolute(scope, path)
                if full is None:
                    continue
                if public and scope == mod and path and path[-1] != "*":
                    # A re-export is an alias, followed by `resolve`; it is a
                    # dependency only if the file's own code uses the name.
                    self.reexports[mod][path[-1]] = full
                    reexported.append((path[-1], full))
                else:
                    self.refs[mod].append(full)
        for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:crate|super|self)(?:\s*::\s*" + IDENT + r")+)", code):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            path = [p.strip() for p in m.group(1).split("::")]
            full = self.absolute(scope_at(m.start()), path)
            if full is not None:
                self.refs[mod].append(full)
        rest = "".join(
            code[b:a] for (_, b), (a, _) in zip([(0, 0)] + use_spans, use_spans + [(len(code), 0)])
        )
        for name, full in reexported:
            # The name itself, not a method (`.push(`), a path's tail
            # (`OciError::Artifact`) or an enum variant declared on its line.
            word = r"(?<![A-Za-z0-9_.:])" + re.escape(name) + r"(?![A-Za-z0-9_])"
            variant = r"(?m)^\s*" + re.escape(name) + r"\s*[{(,]"
            if re.search(word, re.sub(variant, "", rest)):
                self.refs[mod].append(full)

    def absolute(self, scope, path):
        """The path from the crate root, or None for another crate's."""
        if not path:
            return None
        scope = list(scope)
        head = path[0]
        if head == "crate":
            return tuple(path[1:])
        if head in ("super", "self"):
            while path and path[0] in ("super", "self"):
                if path[0] == "super":
                    scope = scope[:-1]
                path = path[1:]
            return tuple(scope) + tuple(path)
        # A child module of the current one (`use dedup::Dedup` in a mod.rs).
        if tuple(scope) + (head,) in self.files:
            return tuple(scope) + tuple(path)
        return None

    def resolve(self, path, seen=None):
        """The file that defines what `path` names."""
        seen = seen or set()
        for k in range(len(path), -1, -1):
            mod = tuple(path[:k])
            if mod in self.files:
                rest = path[k:]
                if rest and rest[0] in self.reexports[mod] and (mod, rest[0]) not in seen:
                    seen.add((mod, rest[0]))
                    target = self.reexports[mod][rest[0]] + tuple(rest[1:])
                    return self.resolve(target, seen)
                return mod
        return ()

    def graph(self):
        g = {self.files[m]: set() for m in self.files}
        for mod, refs in self.refs.items():
            for path in refs:
                target = self.resolve(path)
                if target != mod and target in self.files:
                    g[self.files[mod]].add(self.files[target])
        return g


def cycles(g):
    """Strongly connected sets of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def example_loop(g, comp):
    """One shortest loop through the first file of a cycle, for the report."""
    members = set(comp)
    start = comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(repo, "host", "src"))
    ap.add_argument("--allow", default=os.path.join(here, "import-cycles.allow"))
    args = ap.parse_args()

    allowed = []
    if os.path.exists(args.allow):
        with open(args.allow, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = [p.strip() for p in line.split("->")]
                if len(parts) != 2 or not all(parts):
                    print(f"{args.allow}:{n}: expected `FROM -> TO`", file=sys.stderr)
                    return 2
                allowed.append(tuple(parts))

    full = Crate(args.root).graph()
    g = {v: set(ws) for v, ws in full.items()}
    for a, b in allowed:
        g.get(a, set()).discard(b)
    failed = 0
    for comp in cycles(g):
        failed += 1
        loop = " -> ".join(example_loop(g, comp))
        print(f"import cycle ({len(comp)} files): {' '.join(comp)}\n  e.g. {loop}")
    known = {frozenset(c) for c in cycles(full)}
    for a, b in allowed:
        if b not in full.get(a, ()):
            print(f"allow-list: {a} -> {b} is no longer an import; remove it")
        elif not any(a in c and b in c for c in known):
            print(f"allow-list: {a} -> {b} closes no cycle now; remove it")
        else:
            print(f"known cycle, allowed for now: {a} -> {b}")
    if failed:
        print(
            f"{failed} import cycle(s) between the files of {os.path.relpath(args.root, repo)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
