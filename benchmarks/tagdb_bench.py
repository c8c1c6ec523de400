"""Measure the tag database against its budget: open time, resident memory, lookups/s.

    python benchmarks/tagdb_bench.py [--runs 5] [--queries 200000] [--seed 0]
                                     [--wheel tipo_kgen-0.3.1-py3-none-any.whl]

Every measurement runs in a fresh interpreter so earlier allocations and imports do not
hide the cost of opening.  "Cold" means a new process; the file may be in the OS page
cache.  Queries are half names sampled from the lists (hits), half the same kind of names
changed by one character or case (misses, which probe like real misses), shuffled with
``--seed``; the set is written once and read by every child outside the timed part.

With ``--wheel``, the same queries run against the reference's approach (KGen's
``formatter.py``: one Python ``set`` per list read from the text files, checked in turn),
measured the same way, and the ratio is printed.  Budget: open <= 1 s, RSS <= 40 MB,
>= 1M lookups/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("artist", "characters", "copyrights", "meta")


def rss_kib() -> int:
    """Resident set size from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_tipo(path: str) -> object:
    from tipo.tagdb import TagDatabase

    return TagDatabase.load(path)


def open_reference(folder: str) -> dict[str, set[str]]:
    """What KGen's formatter does at import: each list file read whole and split into a set."""
    lists = {}
    for name in CATEGORIES:
        with open(Path(folder) / f"{name}.txt", encoding="utf-8") as stream:  # universal newlines
            lists[name] = set(stream.read().strip().split("\n"))
    return lists


def reference_lookup(lists: dict[str, set[str]]) -> Callable[[str], str | None]:
    """KGen checks each list in turn."""
    items = tuple(lists.items())

    def category(tag: str) -> str | None:
        for name, names in items:
            if tag in names:
                return name
        return None

    return category


def child(mode: str, source: str, queries_file: str | None, rounds: int) -> dict[str, float]:
    """One measurement in this (fresh) process; returns figures for the parent."""
    sys.path.insert(0, str(REPO))
    import tipo.tagdb  # noqa: F401 - imported before the "before" reading on purpose

    gc.collect()
    before = rss_kib()
    start = time.perf_counter()
    if mode == "tipo":
        database = open_tipo(source)
        lookup = database.category  # type: ignore[attr-defined]
    else:
        database = open_reference(source)
        lookup = reference_lookup(database)
    opened = time.perf_counter() - start
    gc.collect()
    result = {"open_s": opened, "rss_mib": (rss_kib() - before) / 1024}
    if queries_file is None:
        return result
    queries = json.loads(Path(queries_file).read_text(encoding="utf-8"))
    hits = sum(lookup(q) is not None for q in queries)  # also the warm-up pass
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        for query in queries:
            lookup(query)
        wall.append(len(queries) / (time.perf_counter() - start))
        cpu.append(len(queries) / (time.process_time() - start_cpu))
    result.update(
        lookups_wall=statistics.median(wall), lookups_cpu=statistics.median(cpu), hits=hits
    )
    return result


def make_queries(path: Path, count: int, seed: int) -> tuple[list[str], int]:
    """Seeded hits and near-miss queries; returns them and the expected hit count."""
    sys.path.insert(0, str(REPO))
    from tipo.tagdb import TagDatabase

    database = TagDatabase.load(path)
    names = [name for name, _ in database.names()]
    rng = random.Random(seed)
    hits = rng.sample(names, count // 2)
    misses = []
    for name in rng.sample(names, count - count // 2):
        change = rng.randrange(3)
        variant = name.upper() if change == 0 else name + "s" if change == 1 else "x" + name
        misses.append(variant if variant not in database else variant + "\u00a0")
    queries = hits + misses
    rng.shuffle(queries)
    return queries, len(hits)


def run_child(mode: str, source: str, queries: str | None, rounds: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, source, queries or "", str(rounds)]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    figures: dict[str, float] = json.loads(output.splitlines()[-1])
    return figures


def measure(
    mode: str, source: str, queries: str, runs: int, rounds: int, expected_hits: int
) -> dict[str, float]:
    opens = [run_child(mode, source, None, 0) for _ in range(runs)]
    lookups = run_child(mode, source, queries, rounds)
    if lookups["hits"] != expected_hits:
        raise SystemExit(f"{mode}: {lookups['hits']} hits, expected {expected_hits}")
    return {
        "open_s": statistics.median(r["open_s"] for r in opens),
        "open_max_s": max(r["open_s"] for r in opens),
        "rss_mib": statistics.median(r["rss_mib"] for r in opens),
        "lookups_wall": lookups["lookups_wall"],
        "lookups_cpu": lookups["lookups_cpu"],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, source, queries_arg, rounds = sys.argv
        print(json.dumps(child(mode, source, queries_arg or None, int(rounds))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=REPO / "tipo" / "data" / "tagdb.bin")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes timing the open")
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wheel", type=Path, help="tipo-kgen 0.3.1 wheel for the reference")
    args = parser.parse_args()

    queries, expected_hits = make_queries(args.path, args.queries, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        queries_file = Path(folder) / "queries.json"
        queries_file.write_text(json.dumps(queries), encoding="utf-8")
        rows = {"tipo.tagdb": measure("tipo", str(args.path), str(queries_file), args.runs,
                                      args.rounds, expected_hits)}  # fmt: skip
        if args.wheel is not None:
            with zipfile.ZipFile(args.wheel) as archive:  # plain files, as KGen reads them
                for name in CATEGORIES:
                    archive.extract(f"kgen/tag-list/{name}.txt", folder)
            rows["reference sets"] = measure("reference", f"{folder}/kgen/tag-list",
                                             str(queries_file), args.runs, args.rounds,
                                             expected_hits)  # fmt: skip

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; {args.path.name} {args.path.stat().st_size:,} "
          f"bytes; {len(queries):,} queries ({expected_hits:,} hits), seed {args.seed}, "
          f"{args.runs} cold opens, median of {args.rounds} lookup passes")  # fmt: skip
    header = f"{'':16}{'open s (median/max)':>22}{'RSS +MiB':>10}{'lookups/s wall':>16}{'cpu':>12}"
    print(header)
    for label, row in rows.items():
        print(f"{label:16}{row['open_s']:>13.3f} /{row['open_max_s']:>6.3f}{row['rss_mib']:>10.1f}"
              f"{row['lookups_wall']:>16,.0f}{row['lookups_cpu']:>12,.0f}")  # fmt: skip
    print(f"{'budget':16}{'<= 1.000':>22}{'<= 40':>10}{'>= 1,000,000':>16}")
    if "reference sets" in rows:
        ours, ref = rows["tipo.tagdb"], rows["reference sets"]
        print(f"vs reference: open x{ref['open_s'] / ours['open_s']:.1f} faster, RSS "
              f"x{ref['rss_mib'] / ours['rss_mib']:.1f} smaller, lookups "
              f"x{ours['lookups_wall'] / ref['lookups_wall']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
