"""Metadata validation at BirdCLEF scale: 200,000 rows of a 2025-layout `train.csv` in seconds.

Writes a synthetic `train.csv` + `taxonomy.csv` (206 classes, 60 of them numeric iNaturalist
ids) with the real files' quirks (`['']` and `[]`, multi-item lists, the primary label among
the secondaries, `None` latitudes, half ratings, 0.5 % of list literals that need the per-row
fallback), then times what `birdpipe validate` does before probing audio: layout detection,
the class list, list-literal parsing, label checks and quarantine. For reference it also
times parsing the same list columns one row at a time with `ast.literal_eval` (the previous
implementation). Results replace the "## Validation" section of docs/benchmarks.md.

    .venv/bin/python bench/bench_validate.py [--rows 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.layout import detect_layout
from birdpipe.data.metadata import load_dataset_metadata, parse_list_literal
from docsection import publish

SECTION = "## Validation"


def write_dataset(root: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = [str(1_000_000 + i) for i in range(60)] + [f"sp{i:03d}x" for i in range(146)]
    pl.DataFrame({"primary_label": labels, "scientific_name": [f"Genus species{i}" for i in range(206)]}).write_csv(root / "taxonomy.csv")
    primary = np.array(labels)[rng.integers(0, len(labels), rows)]
    other = np.array(labels)[rng.integers(0, len(labels), rows)]
    kind = rng.integers(0, 200, rows)
    secondary = np.where(kind < 80, "['']", np.where(kind < 150, "[]", np.where(kind < 199, np.char.add(np.char.add("['", other), "', 'zzz1']"), np.char.add(np.char.add('["', other), '"]'))))
    secondary = np.where(kind == 10, np.char.add(np.char.add("['", primary), "']"), secondary)
    call = np.where(kind % 3 == 0, "['call', 'song']", np.where(kind % 3 == 1, "['call']", "['flight call', 'alarm call', 'begging call']"))
    (root / "train_audio").mkdir()
    pl.DataFrame(
        {
            "primary_label": primary,
            "secondary_labels": secondary,
            "type": call,
            "filename": [f"{p}/XC{i}.ogg" for i, p in enumerate(primary)],
            "collection": np.array(["XC", "iNat", "CSA"])[kind % 3],
            "rating": (rng.integers(0, 11, rows) / 2).astype(str),
            "url": [f"https://xeno-canto.org/{i}" for i in range(rows)],
            "latitude": np.where(kind % 7 == 0, "None", (rng.random(rows) * 90).round(4).astype(str)),
            "longitude": (rng.random(rows) * 180).round(4).astype(str),
            "scientific_name": "Genus species",
            "common_name": "Pic épeiche ",
            "author": "Someone",
            "license": "cc-by-nc 4.0",
        }
    ).write_csv(root / "train.csv")


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.rows)
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            classes, meta = load_dataset_metadata(detect_layout(root))
            times.append(time.perf_counter() - start)
        texts = pl.read_csv(root / "train.csv", infer_schema=False).select("secondary_labels", "type")
        start = time.perf_counter()
        for column in texts.columns:
            for text in texts[column]:
                try:
                    parse_list_literal(text)
                except (ValueError, SyntaxError):
                    pass
        per_row = time.perf_counter() - start
    return {
        "best": min(times), "median": float(np.median(times)), "per_row_parse": per_row, "classes": classes.frame.height,
        "recordings": meta.recordings.height, "quarantined": meta.quarantine.height,
        "load": os.getloadavg()[0],
    }  # fmt: skip


def report(args: argparse.Namespace, r: dict) -> str:
    return "\n".join(
        [
            SECTION,
            "",
            f"`make bench-validate` (`python bench/bench_validate.py --rows {args.rows} --rounds {args.rounds}`), "
            f"{time.strftime('%Y-%m-%d')}: a synthetic 2025-layout `train.csv` of {args.rows:,} rows, "
            f"{r['classes']} classes (60 numeric), with the real files' quirks.",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, Python "
            f"{platform.python_version()}, polars {pl.__version__}, load average {r['load']:.1f} at the end (shared with other work).",
            "",
            "| step | seconds (best) | seconds (median) | rows/s (best) |",
            "|---|---|---|---|",
            f"| detect layout + class list + parse + validate (what `birdpipe validate` does before probing audio) "
            f"| {r['best']:.2f} | {r['median']:.2f} | {args.rows / r['best']:,.0f} |",
            f"| for reference: the two list columns parsed per row with `ast.literal_eval` | {r['per_row_parse']:.2f} | | "
            f"{args.rows / r['per_row_parse']:,.0f} |",
            "",
            f"{r['recordings']:,} rows pass the metadata checks, {r['quarantined']} quarantined. Audio header probes come on top "
            "(parallel, one process per core; not part of this number).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    return publish(report(args, run(args)), SECTION, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
