#!/usr/bin/env python3
"""Checks every #include of the product against the README's layering table.

The table (between the `layers` markers in README.md) names each component,
its folder and the components it builds on. A file may include its own
component and everything its component builds on, directly or through the
components below; anything else is a layering violation, printed with the
file, the line and the rule it breaks."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def read_layers():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- layers:.*?-->(.*?)<!-- /layers -->", text, re.S)
    if not block:
        sys.exit("README.md: no layers table (between <!-- layers: --> and <!-- /layers -->)")
    layers = {}
    for row in block.group(1).splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("component", "") or set(cells[0]) <= {"-"}:
            continue
        name, folder, deps = cells[0], cells[1].strip("`").rstrip("/"), cells[2]
        layers[name] = (folder, [d.strip() for d in deps.split(",") if d.strip()])
    return layers


def closure(layers):
    allowed = {}

    def visit(name, trail):
        if name in allowed:
            return allowed[name]
        if name in trail:
            sys.exit("README.md layers table: a cycle through " + " -> ".join(trail + [name]))
        if name not in layers:
            sys.exit(f"README.md layers table: unknown component {name!r}")
        below = {name}
        for dep in layers[name][1]:
            below |= visit(dep, trail + [name])
        allowed[name] = below
        return below

    for name in layers:
        visit(name, [])
    return allowed


def component_of(path, layers):
    best = None
    for name, (folder, _) in layers.items():
        if path == folder or path.startswith(folder + "/"):
            if best is None or len(folder) > len(layers[best][0]):
                best = name
    return best


def main():
    layers = read_layers()
    allowed = closure(layers)
    problems = []
    checked = 0
    for name, (folder, _) in layers.items():
        for path in sorted((ROOT / folder).glob("*")):
            if path.suffix not in (".cpp", ".h"):
                continue
            rel = str(path.relative_to(ROOT))
            if component_of(rel, layers) != name:
                continue
            checked += 1
            for number, line in enumerate(path.read_text().splitlines(), 1):
                m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                if not m:
                    continue
                target = component_of(m.group(1), layers)
                if target is None:
                    problems.append(f"{rel}:{number}: includes {m.group(1)}, which no component of README.md owns")
                elif target not in allowed[name]:
                    problems.append(f"{rel}:{number}: {name} includes {m.group(1)} ({target}); "
                                    f"{name} builds on {', '.join(sorted(allowed[name] - {name})) or 'nothing'}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("fix the include, or change the layering in README.md and CMake together", file=sys.stderr)
        return 1
    print(f"{checked} files follow the layering of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
