#!/usr/bin/env python3
"""Fails when a C++ file of the project is not formatted by .clang-format.

Run `clang-format-14 -i FILE` (or the command this prints) to fix it."""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = ("conf", "sni", "balancer", "proxy", "bench", "tests")


def main() -> int:
    tool = shutil.which("clang-format-14") or shutil.which("clang-format")
    if not tool:
        print("clang-format-14 is not installed: run .ci/setup", file=sys.stderr)
        return 1
    files = sorted(str(p) for folder in FOLDERS for ext in ("*.cpp", "*.h")
                   for p in (ROOT / folder).rglob(ext))
    bad = []
    for f in files:
        result = subprocess.run([tool, "--dry-run", "-Werror", "--style=file", f],
                                capture_output=True, text=True)
        if result.returncode != 0:
            bad.append(f)
    if bad:
        print("not formatted as .clang-format says; fix with:", file=sys.stderr)
        print(f"  {tool} -i " + " ".join(str(pathlib.Path(b).relative_to(ROOT)) for b in bad),
              file=sys.stderr)
        return 1
    print(f"{len(files)} files formatted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
