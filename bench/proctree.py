"""Summing a measure over a process and all its descendants, from /proc (Linux)."""
from __future__ import annotations

import os
from typing import Callable

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_sum(pid: int, measure: Callable[[str, list[str]], float]) -> float:
    """``measure(pid_text, stat_fields)`` summed over ``pid`` and its descendants; processes
    that vanish while being read count as zero."""
    children: dict[int, list[int]] = {}
    value: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            fields = stat[stat.rindex(")") + 2:].split()
            value[int(entry)] = measure(entry, fields)
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += value.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process tree."""
    return tree_sum(pid, lambda _, f: (int(f[11]) + int(f[12])) / TICK)


def tree_rss(pid: int) -> int:
    """Resident memory of a process tree, in bytes."""
    def resident(entry: str, _fields) -> float:
        with open(f"/proc/{entry}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    return int(tree_sum(pid, resident))
