"""``cascadevsr bench``: list and run the benchmarks of a source checkout, collecting their JSON lines.

    cascadevsr bench                                   # list them, with what each measures
    cascadevsr bench attention corpus_scaling --quick  # smoke-sized runs
    cascadevsr bench flow_throughput --out bench.jsonl --args="--frames 8"

Each benchmark is a script in ``benchmarks/`` that prints one JSON line per measurement (ours beside the
reference or the naive path, measured in the same run). This command runs them one after another in
the current interpreter, streams their output, and appends every JSON line, tagged with the benchmark,
the command and the time, to ``--out``. The scripts are not part of an installed wheel: they need a
source checkout (``pip install -e .``), whose results go into ``benchmarks/RESULTS.md`` by hand.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cascadevsr.errors import UserError

# Arguments that shrink each benchmark to a smoke run of seconds to a few minutes on 2 CPU cores.
QUICK_ARGS: dict[str, list[str]] = {
    "attention": ["--flops-only"],
    "corpus_scaling": ["--quick", "--clips", "2"],
    "degrade_throughput": ["--quick"],
    "flow_throughput": ["--frames", "4", "--repeats", "1"],
    "metrics_throughput": ["--frames", "1", "--batch-size", "1"],
    "train_step": ["--steps", "3", "--warmup", "1"],
    "upscale_tiles": ["--repeats", "1", "--steps", "1"],
}


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parent.parent / "benchmarks"


def available() -> dict[str, str]:
    """Benchmark name -> the first line of its docstring, for every script in :func:`benchmarks_dir`."""
    folder = benchmarks_dir()
    if not folder.is_dir():
        raise UserError(f"no benchmarks folder at {folder}: the benchmarks ship with the source checkout, "
                        "not the installed package; run from a clone installed with `pip install -e .`.")
    out: dict[str, str] = {}
    for script in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        out[script.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr bench``."""
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (none: list them)")
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-sized runs (each benchmark's own small settings)")
    parser.add_argument("--out", help="append every JSON line, tagged, to this file (JSON Lines)")
    parser.add_argument("--args", default="", metavar='"ARGS"',
                        help='arguments for every benchmark run, as one string: --args="--frames 8"')


def json_lines(text: str) -> list[dict]:
    """The JSON objects among the lines of ``text`` (a benchmark's stdout)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def run_one(name: str, args: list[str]) -> list[dict]:
    """Run benchmark ``name`` with ``args`` in this interpreter, echoing its output; its JSON lines.

    Raises:
        UserError: the benchmark exited non-zero.
    """
    cmd = [sys.executable, str(benchmarks_dir() / f"{name}.py"), *args]
    print(f"bench: {' '.join([name, *args])}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    captured = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        captured.append(line)
    if proc.wait():
        raise UserError(f"benchmark {name} failed with exit code {proc.returncode} (its output is above).")
    return json_lines("".join(captured))


def run(args: argparse.Namespace) -> int:
    """List the benchmarks, or run the chosen ones and collect their JSON lines."""
    names = available()
    chosen = list(names) if args.all else list(args.names)
    if not chosen:
        width = max(map(len, names), default=0)
        for name, doc in names.items():
            print(f"{name:<{width}}  {doc}")
        return 0
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}.")
    extra = shlex.split(args.args)
    for name in chosen:
        bench_args = [*(QUICK_ARGS.get(name, []) if args.quick else []), *extra]
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        results = run_one(name, bench_args)
        if args.out:
            with open(args.out, "a") as f:
                for result in results:
                    record = {"benchmark": name, "args": bench_args, "started": started,
                              "machine": platform.node(), "result": result}
                    f.write(json.dumps(record) + "\n")
    return 0
