#!/usr/bin/env python3
"""Lists the product functions longer than a limit (default 80 lines).

A function is a definition that starts at column 0 (or inside a class, at
two spaces) and ends at its matching closing brace; lambdas and blocks count
toward the function that holds them. The tree is clang-formatted, which is
what makes this reading reliable.

  python3 tests/style/function_lengths.py [--limit N] [FOLDER ...]
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRODUCT = ("conf", "sni", "balancer", "proxy", "bench")
SIGNATURE = re.compile(r"^(?P<indent> {0,2})(?!(?:if|for|while|switch|return|namespace|class|struct|enum|union)\b)"
                       r"[A-Za-z_][\w:<>,\s\*&~\[\]]*?(?P<name>[~\w]+(?:::[~\w]+)*)\s*\(")


def functions(path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = SIGNATURE.match(lines[i])
        if not m or lines[i].rstrip().endswith(";"):
            i += 1
            continue
        # Find the body's opening brace before any ';' at depth 0.
        j, opened = i, False
        while j < len(lines) and j < i + 12:
            text = lines[j]
            if "{" in text:
                opened = True
                break
            if text.rstrip().endswith(";"):
                break
            j += 1
        if not opened:
            i += 1
            continue
        depth, k = 0, j
        while k < len(lines):
            stripped = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|//.*$', "", lines[k])
            depth += stripped.count("{") - stripped.count("}")
            if depth <= 0 and k >= j:
                break
            k += 1
        yield m.group("name"), i + 1, k - i + 1
        i = k + 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("folders", nargs="*", default=PRODUCT)
    args = parser.parse_args()
    found = []
    for folder in args.folders:
        for path in sorted((ROOT / folder).rglob("*.cpp")):
            for name, line, length in functions(path):
                if length > args.limit:
                    found.append((length, f"{path.relative_to(ROOT)}:{line}", name))
    for length, where, name in sorted(found, reverse=True):
        print(f"{length:5d}  {where}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
