"""Write a benchmark's table to stdout and to a Markdown file under results/."""

from __future__ import annotations

import platform
import sys
from datetime import date
from pathlib import Path

import torch

from hashtune.report.tables import markdown_table

__all__ = ["markdown_table", "write_report"]


def write_report(path: str | Path, title: str, command: str, table: str, notes: str = "") -> None:
    """Print the table and write it with the command, date and machine that produced it."""
    python = sys.version.split()[0]
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {python}, torch {torch.__version__}"
    )
    text = f"# {title}\n\nCommand: `{command}`\n\nDate: {date.today()}; machine: {machine}\n\n{table.rstrip()}\n"
    if notes:
        text += f"\n{notes}\n"
    print(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
