#!/usr/bin/env python3
"""Fails when a crate's files import each other in a circle.

Reads every `use` tree and every inline `crate::` / `super::` / `self::` path of a crate's
`src/`, resolves each to the file of the deepest module it names, and looks for cycles in the
file graph. A module root (`mod.rs`, `lib.rs`) declares its children, so an arrow between a
root and a file below it is not counted; every other arrow is. Generated files are skipped.
A path through a root's re-export (`crate::client::Cancelled`) arrives at the root, not at the
file that defines the item.

Usage: scripts/imports.py transport [lb ...]   (prints each crate's arrows with -v)
"""

import os
import re
import sys


def module_files(src):
    """Module path (tuple) -> file, for every .rs file under src."""
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            files[tuple(rel)] = path
    return files


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def split_top(text):
    """Splits a use-tree list at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def expand(tree, prefix=()):
    """Every path a use tree names."""
    tree = tree.strip()
    if "{" not in tree:
        tree = re.sub(r"\s+as\s+\w+$", "", tree)
        return [prefix + tuple(s for s in tree.split("::") if s)]
    head, _, rest = tree.partition("{")
    head = tuple(s for s in head.split("::") if s)
    out = []
    for part in split_top(rest.rsplit("}", 1)[0]):
        out.extend(expand(part, prefix + head) if part != "self" else [prefix + head])
    return out


def absolute(path, here):
    """A path as seen from module `here`, made absolute from the crate root."""
    here = list(here)
    if path[0] == "crate":
        return path[1:]
    if path[0] in ("super", "self"):
        base = here
        while path and path[0] in ("super", "self"):
            if path[0] == "super":
                base = base[:-1]
            path = path[1:]
        return tuple(base) + path
    return None


def arrows(src):
    files = module_files(src)
    by_file = {v: k for k, v in files.items()}
    edges = set()
    for path, module in by_file.items():
        with open(path) as f:
            text = f.read()
        if "generated" in os.path.basename(path):
            continue
        # A file that is not a module root is seen from its own module.
        text = strip_comments(text)
        found = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text):
            found.extend(expand(m.group(1)))
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
            found.append(tuple(m.group(1).split("::")))
        for p in found:
            target = absolute(p, module)
            if target is None:
                continue
            while target and target not in files:
                target = target[:-1]
            dest = files.get(target, files.get(()))
            if dest == path:
                continue
            a, b = module, by_file[dest]
            # A root and the files below it: the root declares them.
            if a[: len(b)] == b or b[: len(a)] == a:
                continue
            edges.add((path, dest))
    return edges


def cycles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def main():
    verbose = "-v" in sys.argv
    crates = [a for a in sys.argv[1:] if a != "-v"]
    failed = False
    for crate in crates:
        edges = arrows(os.path.join(crate, "src"))
        if verbose:
            for a, b in sorted(edges):
                print(f"{a} -> {b}")
        found = cycles(edges)
        for cycle in found:
            print(f"{crate}: import circle: " + " -> ".join(cycle))
        failed |= bool(found)
        print(f"{crate}: {len(edges)} arrows between files, {len(found)} circles")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
