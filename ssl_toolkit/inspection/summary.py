"""The inspection report as terminal text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_toolkit.terminal import display_width, pad, terminal_safe
from ssl_toolkit.units import human_size

GROUPS_LISTED = 5
MEMBERS_LISTED = 4


def _counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _short(report: dict[str, Any], member_id: str) -> str:
    if report["kind"] == "folder":
        root = Path(report["data"])
        try:
            return str(Path(member_id).relative_to(root))
        except ValueError:
            return member_id
    if report["kind"] == "shards":
        return member_id.removeprefix(f"{report['data']}:")  # split:row for shards written without names.npy; else the original path
    return member_id


def _groups(report: dict[str, Any], kind: str, title: str) -> list[str]:
    sec = report["duplicates"][kind]
    if sec is None:
        return []
    head = f"{title:<16}{sec['num_groups']} group(s), {sec['images']} images, {sec['redundant']} redundant"
    if sec["leak_groups"]:
        head += f"; LEAK: {sec['leak_groups']} group(s) span train and test ({sec['leaked_test_images']} test images)"
    mixed = sum(1 for g in sec["groups"] if g.get("mixed_labels"))
    if mixed:
        head += f"; MIXED LABELS: {mixed} group(s)"
    lines = [head]
    ordered = sec["groups"]  # leaks first
    for g in ordered[:GROUPS_LISTED]:
        members = g["members"]
        if g["crosses_split"]:  # show one image of each split first
            first = [next(m for m in members if m["split"] == s) for s in ("train", "test")]
            members = first + [m for m in members if m not in first]
        mixed_labels = bool(g.get("mixed_labels"))
        tags = [lambda m: m["split"]] + ([lambda m: m["label"]] if mixed_labels else [])
        names = [f"{_short(report, m['id'])} [{', '.join(tag(m) for tag in tags)}]" for m in members[:MEMBERS_LISTED]]
        more = f" +{g['size'] - MEMBERS_LISTED} more" if g["size"] > MEMBERS_LISTED else ""
        marks = ("leak: " if g["crosses_split"] else "") + ("mixed labels: " if mixed_labels else "")
        lines.append(f"{'':<16}{marks}{', '.join(names)}{more}")
    if len(ordered) > GROUPS_LISTED:
        lines.append(f"{'':<16}... {len(ordered) - GROUPS_LISTED} more (see --json or --out)")
    return lines


def _unused(report: dict[str, Any]) -> list[str]:
    """Images the folder's layout leaves out (count, a few named) and files of other types by extension."""
    u = report.get("unused")
    if not u:
        return []
    lines = []
    if u["images"]:
        where = [f"{n} {what}" for n, what in ((u["top_level"], "at the top level"), (u["nested"], "in nested folders")) if n]
        names = ", ".join(_short(report, p) for p in u["examples"]) + (", ..." if u["images"] > len(u["examples"]) else "")
        lines.append(f"{'not used':<16}{u['images']} image(s) ({', '.join(where)}): {names}")
    if u["other_files"]:
        lines.append(
            f"{'other files':<16}{_counts({ext or '(none)': n for ext, n in u['other_files'].items()})} (not images the toolkit reads)"
        )
    return lines


def format_summary(report: dict[str, Any]) -> str:
    """A readable multi-line summary of an inspection report."""
    n, s, m = report["images"], report["sizes"], report["modes"]
    lines = [
        f"{'data':<16}{report['data']} ({report['kind']})",
        f"{'images':<16}{n['total']} (train {n['train']}, test {n['test']}), unreadable files {n['unreadable']}",
        f"{'width':<16}min {s['width']['min']}, median {s['width']['median']}, max {s['width']['max']}",
        f"{'height':<16}min {s['height']['min']}, median {s['height']['median']}, max {s['height']['max']}",
        f"{'aspect ratio':<16}min {s['aspect_ratio']['min']}, median {s['aspect_ratio']['median']}, max {s['aspect_ratio']['max']}",
        f"{'modes':<16}{_counts(m['modes'])}",
        f"{'channels':<16}{_counts({f'{k}-channel': v for k, v in m['channels'].items()})}; bit depth {_counts({f'{k}-bit': v for k, v in m['bit_depth'].items()})}",
    ]
    if report["formats"]:
        lines.append(f"{'formats':<16}{_counts(report['formats'])}")
    if report["file_sizes"]:
        fs = report["file_sizes"]
        lines.append(
            f"{'file size':<16}total {human_size(fs['total'])}; per file min {human_size(fs['min'])}, median {human_size(fs['median'])}, max {human_size(fs['max'])}"
        )
    norm = report["normalisation"]
    lines.append(f"{'normalisation':<16}{norm['channels']} channel(s) at {norm['image_size']}px: mean {norm['mean']}, std {norm['std']}")
    lab = report["labels"]
    if lab:
        lines.append(
            f"{'classes':<16}{lab['num_classes']}{' (multi-label)' if lab['multilabel'] else ''}; imbalance (largest/smallest) overall {lab['imbalance']}, "
            f"train {lab['splits']['train']['imbalance']}, test {lab['splits']['test']['imbalance']}"
        )
        width = max([5] + [display_width(terminal_safe(c)) for c in lab["classes"]])
        lines.append(f"{'':<16}{'class':<{width}}  {'train':>7} {'test':>7}")
        for c in lab["classes"]:
            lines.append(
                f"{'':<16}{pad(terminal_safe(c), width)}  {lab['splits']['train']['counts'][c]:>7} {lab['splits']['test']['counts'][c]:>7}"
            )
    else:
        lines.append(f"{'classes':<16}none (unlabelled)")
    lines += _groups(report, "exact", "exact dups")
    lines += _groups(report, "near", "near dups")
    lines += _groups(report, "embedding", "embedding dups")
    if report["unreadable"]:
        lines.append(f"{'unreadable':<16}{len(report['unreadable'])} file(s)")
        for u in report["unreadable"][:20]:
            lines.append(f"{'':<16}{_short(report, u['path'])}: {u['reason']}")
        if len(report["unreadable"]) > 20:
            lines.append(f"{'':<16}... {len(report['unreadable']) - 20} more")
    lines += _unused(report)
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    if "dedupe" in report:
        d = report["dedupe"]
        lines.append(f"{'dedupe list':<16}{d['drop']} path(s) to drop written to {d['path']}")
        if d.get("left_out"):
            lines.append(f"{'':<16}left out, a newline in the name (delete by hand): {', '.join(_short(report, p) for p in d['left_out'])}")
    if "html" in report:
        lines.append(f"{'html':<16}{report['html']}")
    lines.append(f"{'seconds':<16}{report['seconds']:.1f}")
    return "\n".join(terminal_safe(line) for line in lines)  # a class folder named "a\nb" stays on its row
