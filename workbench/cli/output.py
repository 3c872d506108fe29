"""What the commands print and write: the stderr console, rich tables on stdout, and tidy tables as files."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from workbench.common.errors import ConfigError

console = Console(stderr=True, soft_wrap=True)
TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def show(view) -> None:
    """Print a rich table for people on stdout. Piped or redirected (not a terminal), it is laid out at its natural
    width, so that no hook or label name is cut ("return_…") by an 80-column guess."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=100_000)  # a table takes only the width its contents need
    out.print(view)


def table_format(out: Path | None, option: str = "--out") -> str | None:
    """The format a table path asks for (.parquet / .pq or .csv), checked before any work."""
    if out is None:
        return None
    fmt = TABLE_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ConfigError(f"{option} {out}: a table is written as .parquet or .csv; end the name with one of them.")
    return fmt


def write_table_file(table, out: Path, option: str = "--out") -> Path:
    """Write a tidy table atomically as parquet or CSV, chosen by `out`'s suffix."""
    from workbench.common.io import atomic_write_bytes, write_parquet

    if table_format(out, option) == "csv":
        return atomic_write_bytes(out, table.to_csv(index=False).encode())
    return write_parquet(out, table)
