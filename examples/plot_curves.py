#!/usr/bin/python3
"""Plots ablate's validation curves: one line per arm (mean over seeds, band = min..max).

Usage: /usr/bin/python3 examples/plot_curves.py curves.csv curves.png METRIC_NAME [log [TITLE]]
Needs Debian's python3-matplotlib (scripts/demo installs it).
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst, metric = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = defaultdict(lambda: defaultdict(list))  # arm -> step -> [values over seeds]
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            runs[row["arm"]][int(row["step"])].append(float(row[metric]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, by_step in sorted(runs.items()):
        steps = sorted(by_step)
        mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
        ax.plot(steps, mean, marker="o" if len(steps) <= 40 else None, label=arm)
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], alpha=0.2)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(metric)
    if len(sys.argv) > 4 and sys.argv[4] == "log":
        ax.set_yscale("log")
    title = sys.argv[5] if len(sys.argv) > 5 else "validation " + metric + " per arm (band: min..max over seeds)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main()
