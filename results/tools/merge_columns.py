# Adds columns of one `benchmark.py report` page to another page of the same env, for a results page whose older runs
# are gone (made before runs were archived), so that it cannot be generated again as a whole. Each table of the source
# page's sections (zero-shot, few-shot, ...) gives the chosen columns to the table at the same place in the target page,
# matched row by row on the first cell, "train (paper: 5 seeds, ...)" matching "train (paper)" ("—" where one side has
# no such row; a row the target lacks is added, except "gradient steps, data": give those in the provenance line). A
# column that is "—" in every row of a table (a protocol its script lacks) is left out of that table; a section the
# target lacks is added before "## Runtime" (at the end if there is none); the Runtime table gets the chosen
# columns' rows.
# Columns can be renamed on the way in (--columns SRC=NEW) and the target's own columns renamed first (--rename
# OLD=NEW), e.g. when a rerun replaces a column under the same experiment name. Run from the repository root, then add
# a provenance line to the page's command block by hand:
#   python results/tools/merge_columns.py --target results/200k/point-robot.md --source results/200k/metanf/point-robot.md \
#     --columns metanf metanf-no-selection_eval --rename "metanf=metanf (tanh f(0))"
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import List

import tyro


@dataclass
class Args:
    target: str
    """the page that gets the columns (rewritten in place)"""
    source: str
    """the `benchmark.py report` page they come from"""
    columns: List[str]
    """the source's column names to add, each optionally SRC=NEW to add it under another name"""
    rename: List[str] = field(default_factory=list)
    """OLD=NEW: rename a column (and its Runtime row) of the target before adding"""


def sections(lines: list) -> dict:
    """{section title ("" before the first "## "): [tables, each a list of line indices]}"""
    found, title, table = {"": []}, "", None
    for i, line in enumerate(lines):
        if line.startswith("## "):
            title, table = line[3:].strip(), None
            found[title] = []
        elif line.startswith("|"):
            if table is None:
                table = []
                found[title].append(table)
            table.append(i)
        else:
            table = None
    return found


def cells(line: str) -> list:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row(values: list) -> str:
    return "| " + " | ".join(values) + " |"


def key(cell: str) -> str:
    return re.sub(r"\(paper[^)]*\)", "(paper)", cell)


def pairs(specs: list) -> list:
    return [tuple(s.split("=", 1)) if "=" in s else (s, s) for s in specs]


def merge(target: str, source: str, columns: list, rename: list = (), source_name: str = "the source page") -> str:
    """The target page's text with the source page's `columns` ([(source name, new name)]) added."""
    lines, src = target.splitlines(), source.splitlines()
    renamed = dict(rename)
    for section in sections(lines).values():
        for table in section:
            header = cells(lines[table[0]])
            if header[0] == "algorithm":
                for i in table[2:]:
                    values = cells(lines[i])
                    lines[i] = row([renamed.get(values[0], values[0])] + values[1:])
            else:
                lines[table[0]] = row([renamed.get(c, c) for c in header])
    target_sections, additions, new_sections, found = sections(lines), {}, [], set()
    for title, tables in sections(src).items():
        for k, table in enumerate(tables):
            header = cells(src[table[0]])
            if header[0] == "algorithm":  # Runtime: one row per algorithm
                rows = {cells(src[i])[0]: cells(src[i]) for i in table[2:]}
                missing = [c for c, _ in columns if c not in rows]
                if missing:
                    raise SystemExit(f"error: {missing} not in the Runtime table of the source page")
                if title in target_sections and k < len(target_sections[title]):
                    last = target_sections[title][k][-1]
                    additions[last] = [row([new] + rows[c][1:]) for c, new in columns]
                continue
            index = {c: j for j, c in enumerate(header)}
            by_key = {key(cells(src[i])[0]): cells(src[i]) for i in table[2:]}
            by_key.pop("gradient steps, data", None)  # the target's own header says its columns' steps and data
            chosen = [(c, new) for c, new in columns if c in index]
            found.update(c for c, _ in chosen)
            chosen = [(c, new) for c, new in chosen if any(v[index[c]] != "—" for v in by_key.values())]
            if not chosen:
                continue
            if title not in target_sections or k >= len(target_sections[title]):
                block = [row([header[0]] + [new for _, new in chosen]), "|---" * (len(chosen) + 1) + "|"]
                block += [row([values[0]] + [values[index[c]] for c, _ in chosen]) for values in by_key.values()]
                new_sections.append((title, k, block))
                continue
            rows = target_sections[title][k]
            lines[rows[0]] = lines[rows[0]].rstrip() + "".join(f" {new} |" for _, new in chosen)
            lines[rows[1]] = lines[rows[1]] + "---|" * len(chosen)
            width = len(cells(lines[rows[0]])) - len(chosen)
            for i in rows[2:]:
                values = by_key.pop(key(cells(lines[i])[0]), None)
                lines[i] = lines[i].rstrip() + "".join(f" {values[index[c]] if values else '—'} |" for c, _ in chosen)
            additions[rows[-1]] = [row([label] + ["—"] * (width - 1) + [values[index[c]] for c, _ in chosen])
                                   for label, values in by_key.items()]
    missing = [c for c, _ in columns if c not in found]
    if missing:
        raise SystemExit(f"error: {missing} not a column of any table of {source_name}")
    added = []
    for title in dict.fromkeys(t for t, _, _ in new_sections):
        added += [f"## {title}", "", f"(Only the columns added from {source_name}.)", ""]
        for _, _, block in [s for s in new_sections if s[0] == title]:
            added += block + [""]
    out = []
    for i, line in enumerate(lines):
        if line.startswith("## ") and line[3:].strip() == "Runtime":
            out, added = out + added, []
        out.append(line)
        out += additions.get(i, [])
    return "\n".join(out + ([""] + added if added else [])) + "\n"


if __name__ == "__main__":
    args = tyro.cli(Args)
    with open(args.target) as f:
        target = f.read()
    with open(args.source) as f:
        source = f.read()
    for spec in args.rename:
        if "=" not in spec or not re.search(rf"\| {re.escape(spec.split('=', 1)[0])} \|", target):
            raise SystemExit(f"error: --rename {spec}: expected OLD=NEW with OLD a column of {args.target}")
    merged = merge(target, source, pairs(args.columns), pairs(args.rename), args.source)
    folder = os.path.dirname(os.path.abspath(args.target))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".md") as f:
        f.write(merged)
    os.replace(f.name, args.target)
    print(f"added {', '.join(new for _, new in pairs(args.columns))} to {args.target}")
