#!/usr/bin/env python3
"""The configuration manual keeps up with the parser, and the README points
only at what the repository has.

1. Every key the parser knows (the `constexpr std::string_view NAME_keys[]`
   arrays of conf/read.cpp) appears as `key` in conf/README.md under its
   table's heading: settings_keys under `[global]`, pool_keys under
   `[[pool]]`, health_keys under `health`, and so on; every top-level table
   has a heading of its own.
2. Every relative link and repository path README.md names exists, and the
   README names no document outside the repository.

Usage: check_config_keys.py [--read-cpp FILE] [--manual FILE] [--readme FILE]
Exits 1 with one line per problem."""

import argparse
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Which heading holds an array's keys; arrays not listed here belong to the
# table `[[NAME]]` (route_keys -> [[route]]).
HEADINGS = {
    "settings": "`[global]`",
    "health": "`health`",
    "deny_header": "`header`",
}
# Documents of the project that live outside the repository.
OUTSIDE = ("SPEC.md", "DESIGN.md")


def key_arrays(source):
    """{array name without _keys: [keys]} from the C++ source."""
    arrays = {}
    pattern = r"constexpr\s+std::string_view\s+(\w+)_keys\[\]\s*=\s*\{(.*?)\};"
    for m in re.finditer(pattern, source, re.S):
        arrays[m.group(1)] = re.findall(r'"([^"]*)"', m.group(2))
    return arrays


def sections(text):
    """[(level, heading, body)]: each heading's text up to the next heading
    of the same or a higher level (subsections included). Headings inside
    code blocks do not count."""
    lines = text.splitlines()
    heads = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#+)\s+(.*)", line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for n, (i, level, heading) in enumerate(heads):
        end = next((j for j, lvl, _ in heads[n + 1:] if lvl <= level), len(lines))
        out.append((level, heading, "\n".join(lines[i + 1:end])))
    return out


def check_keys(source, manual):
    problems = []
    arrays = key_arrays(source)
    if not arrays:
        return ["no `constexpr std::string_view *_keys[]` arrays found in the parser"]
    secs = sections(manual)
    for name, keys in arrays.items():
        if name == "top_level":
            for key in keys:
                if not any(f"`[[{key}]]`" in h or f"`[{key}]`" in h for _, h, _ in secs):
                    problems.append(f"table {key}: no heading `[[{key}]]` or `[{key}]` in the manual")
            continue
        heading = HEADINGS.get(name, f"`[[{name}]]`")
        found = [body for _, h, body in secs if heading in h]
        if not found:
            problems.append(f"{name}_keys: no heading with {heading} in the manual")
            continue
        body = found[0]
        for key in keys:
            if f"`{key}`" not in body:
                problems.append(f"{name}_keys: key `{key}` is not described under the heading {heading}")
    return problems


def check_readme(readme, root):
    problems = []
    for outside in OUTSIDE:
        if outside in readme:
            problems.append(f"names {outside}, which is not in the repository; link the manual instead")
    # Markdown links [text](target), skipping URLs and in-page anchors.
    targets = set()
    for m in re.finditer(r"\]\(([^)\s]+)\)", readme):
        target = m.group(1).split("#", 1)[0]
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):
            targets.add(target)
    # Repository paths in code spans: `conf/README.md`, `tests/style/check_layers.py`, `conf/`.
    for m in re.finditer(r"`([^`\s]+)`", readme):
        word = m.group(1)
        if re.fullmatch(r"(\.ci|bench|conf|proxy|sni|balancer|tests)(/[\w.\-]+)*/?", word):
            targets.add(word)
    for target in sorted(targets):
        if not os.path.exists(os.path.join(root, target)):
            problems.append(f"links to {target}, which does not exist in the repository")
    # In-page anchors must name a heading of the README.
    anchors = {anchor(h) for _, h, _ in sections(readme)}
    for m in re.finditer(r"\]\(#([^)\s]+)\)", readme):
        if m.group(1) not in anchors:
            problems.append(f"links to #{m.group(1)}, which is no heading of the README")
    return problems


def anchor(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--read-cpp", default=os.path.join(ROOT, "conf", "read.cpp"))
    parser.add_argument("--manual", default=os.path.join(ROOT, "conf", "README.md"))
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = parser.parse_args()
    with open(args.read_cpp) as f:
        source = f.read()
    with open(args.manual) as f:
        manual = f.read()
    with open(args.readme) as f:
        readme = f.read()
    problems = [f"{os.path.relpath(args.manual, ROOT)}: {p}" for p in check_keys(source, manual)]
    problems += [f"{os.path.relpath(args.readme, ROOT)}: {p}" for p in check_readme(readme, ROOT)]
    manual_dir = os.path.dirname(os.path.abspath(args.manual))
    for m in re.finditer(r"\]\(([^)\s#]+)(#[^)\s]*)?\)", manual):
        target = m.group(1)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not os.path.exists(os.path.join(manual_dir, target)):
            problems.append(f"{os.path.relpath(args.manual, ROOT)}: links to {target}, which does not exist")
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print("every parser key is described in the manual; the README's links resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
