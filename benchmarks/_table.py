"""Write a benchmark's table to stdout and to a Markdown file under results/."""

from __future__ import annotations

import platform
import sys
from datetime import date
from pathlib import Path

import torch


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: str | Path, title: str, command: str, table: str, notes: str = "") -> None:
    """Print the table and write it with the command, date and machine that produced it."""
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {sys.version.split()[0]}, torch {torch.__version__}"
    text = f"# {title}\n\nCommand: `{command}`\n\nDate: {date.today()}; machine: {machine}\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    print(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
