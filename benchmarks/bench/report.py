"""Results: kernel-vs-reference ratios, tables, targets and the JSON file every benchmark writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .machine import environment_metadata

__all__ = ["compare_to_reference", "format_cell", "print_table", "print_table_and_errors", "write_json", "Targets"]


def compare_to_reference(kernel_row: Dict[str, object], reference_row: Dict[str, object]) -> None:
    """Adds to the kernel row: speedup = reference median / kernel median, and mem_ratio = reference
    peak / kernel peak when both rows measured their peak (inf for a kernel peak of 0)."""
    if "median_ms" in kernel_row and "median_ms" in reference_row:
        kernel_row["speedup"] = reference_row["median_ms"] / kernel_row["median_ms"]
    if kernel_row.get("peak_bytes") is not None and reference_row.get("peak_bytes") is not None:
        kernel_row["mem_ratio"] = (reference_row["peak_bytes"] / kernel_row["peak_bytes"]
                                   if kernel_row["peak_bytes"] > 0 else float("inf"))


def format_cell(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


def print_table(rows: Sequence[Dict[str, object]], columns: Sequence[tuple], *, file=None) -> None:
    """columns: (key, header, format spec) triples; a row's missing or None value prints as "-".
    Numbers are right-aligned, text left-aligned."""
    cells = [[format_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) is None for row in rows)
               for key, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(headers), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for c in cells:
        print(line(c), file=file)


def print_table_and_errors(rows: List[Dict[str, object]], columns) -> None:
    """The result table, then one line per row that could not run."""
    print_table(rows, columns)
    for r in rows:
        if r.get("error"):
            print(f"error: {r['case']} {r['pass']} {r['impl']}: {r['error']}")


def write_json(path: os.PathLike, payload: Dict[str, object], *, device) -> Path:
    """Writes payload with an "environment" entry (environment_metadata) added, creating parent folders."""
    from stylesdf_fast._atomic import write_text   # a killed run leaves the last good file

    document = {"environment": environment_metadata(device), **payload}
    return write_text(path, json.dumps(document, indent=2, default=str) + "\n")


class Targets:
    """Pass/fail targets of one run: each is listed in the JSON and written onto the row it judges
    (its "targets" column). A missed target is a finding, never an exit status."""

    def __init__(self):
        self.results: List[Dict[str, object]] = []

    def check(self, name: str, row: Optional[Dict[str, object]], metric: str, threshold: float, label: str,
              *, at_most: bool = False) -> None:
        """row[metric] >= threshold (<= with at_most); a missing row or value fails."""
        value = None if row is None else row.get(metric)
        passed = value is not None and (value <= threshold if at_most else value >= threshold)
        self.results.append({"name": name, "metric": metric, "value": value, "threshold": threshold,
                             "passed": bool(passed), **({"case": row.get("case"), "pass": row.get("pass")} if row else {})})
        if row is not None:
            text = f"{label} {'PASS' if passed else 'FAIL'}"
            row["targets"] = f"{row['targets']}; {text}" if row.get("targets") else text

    def print(self, heading: str) -> None:
        print(f"{heading}:")
        if not self.results:
            print("  (none evaluated)")
        for target in self.results:
            value = target["value"]
            shown = "-" if value is None else f"{value:.3g}"
            print(f"  {'PASS' if target['passed'] else 'FAIL'}  {target['name']}: {shown} (threshold {target['threshold']:.3g})")
        print(f"  {self.met}/{len(self.results)} targets met")

    @property
    def met(self) -> int:
        return sum(target["passed"] for target in self.results)
