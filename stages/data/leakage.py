"""The leakage rule: one text, one label, one split.

A model scored on a dev text it was trained on, or on a text the data labels both ways, reports a number that
means less than it says. Real exports (tweets, tickets, reviews) hold many such rows, so `download` applies one
rule to every task before anything is written (docs/reliability.md):

- the *key* of an example is its text, or its pair of texts, with runs of whitespace collapsed (case kept);
- **conflicting labels**: a key seen with two or more labels (in any labelled split) is ambiguous: every labelled
  copy of it is dropped, from every split;
- **duplicates within a split**: the first copy (in file order) is kept;
- **across splits**: test outranks dev, dev outranks train: a row whose key is in a higher split is dropped
  from the lower one, so evaluation splits stay whole and train never holds an evaluation text.

Without a dev file the rule runs before the automatic split, so no duplicate can straddle it. A benchmark's
published splits (GLUE) are kept as published, so that scores compare with the literature: there the same
counts are reported and nothing is dropped (`applied: false`). Every count goes to metrics/<task>/data.json.
"""

from __future__ import annotations

import pandas as pd

RULE = ("key = text(s) with whitespace collapsed; a key with conflicting labels: every labelled copy dropped; "
        "duplicates within a split: first kept; across splits (test > dev > train): dropped from the lower split")
EXAMPLES = 5  # conflicting texts shown in data.json and on the console


def normalise(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def keys(df: pd.DataFrame) -> pd.Series:
    """One key per row: text_a, or text_a TAB text_b for a pair, whitespace collapsed."""
    key = df["text_a"].map(normalise)
    if "text_b" in df.columns and df["text_b"].notna().any():
        key = key + "\t" + df["text_b"].map(normalise)
    return key


def _overlaps(frames: dict[str, pd.DataFrame], priority: list[str]) -> dict[str, dict[str, int]]:
    """For each split, how many of its rows have a key in each higher-priority split."""
    key_sets = {split: set(keys(frames[split])) for split in priority}
    out = {}
    for rank, split in enumerate(priority):
        row_keys = keys(frames[split])
        counts = {higher: int(row_keys.isin(key_sets[higher]).sum()) for higher in priority[:rank]}
        if counts:
            out[split] = counts
    return out


def deduplicate(frames: dict[str, pd.DataFrame], priority: list[str], label_names: tuple[str, ...] = (),
                apply: bool = True) -> tuple[dict[str, pd.DataFrame], dict]:
    """Apply the rule to `frames` (columns text_a, text_b, label (-1 = unlabelled), idx); `priority` names the
    splits, highest first. Returns the frames (unchanged when apply=False) and the counts for data.json."""
    priority = [s for s in priority if s in frames]
    key = {split: keys(frames[split]) for split in priority}

    # 1. conflicting labels, over the labelled rows of every split
    labelled = pd.concat([pd.DataFrame({"key": key[s], "label": frames[s]["label"].to_numpy(), "split": s,
                                        "idx": frames[s]["idx"].to_numpy()}) for s in priority], ignore_index=True)
    labelled = labelled[labelled["label"] >= 0]
    n_labels = labelled.groupby("key", sort=False)["label"].nunique()
    conflicting = set(n_labels.index[n_labels > 1])
    examples = []
    for text in list(n_labels.index[n_labels > 1])[:EXAMPLES]:
        rows = labelled[labelled["key"] == text]
        names = sorted({label_names[i] if i < len(label_names) else str(i) for i in rows["label"]})
        examples.append({"text": text[:200], "labels": names,
                         "rows": [f"{s} idx {i}" for s, i in zip(rows["split"], rows["idx"])][:4]})
    conflict_rows = {s: int((key[s].isin(conflicting) & (frames[s]["label"] >= 0).to_numpy()).sum()) for s in priority}

    out = {}
    within = {}
    for s in priority:
        keep = (~(key[s].isin(conflicting) & (frames[s]["label"] >= 0).to_numpy())).to_numpy()
        duplicated = key[s][keep].duplicated(keep="first").to_numpy()
        within[s] = int(duplicated.sum())
        out[s] = frames[s][keep][~duplicated] if apply else frames[s]

    across = _overlaps(out, priority)
    if apply:  # drop, from each split, the rows whose key a higher split holds
        seen: set = set()
        for s in priority:
            row_keys = keys(out[s])
            part = out[s][~row_keys.isin(seen).to_numpy()]
            part.attrs = dict(frames[s].attrs)
            out[s] = part.reset_index(drop=True)
            seen |= set(row_keys)
    report = {
        "rule": RULE,
        "applied": apply,
        "conflicting_label_texts": len(conflicting),
        "conflicting_label_rows": conflict_rows,
        "conflicting_label_examples": examples,
        "duplicates_within_split": within,
        "duplicates_across_splits": across,
    }
    return {s: out[s] for s in frames if s in out} | {s: frames[s] for s in frames if s not in out}, report


def remaining_overlaps(frames: dict[str, pd.DataFrame], priority: list[str]) -> dict[str, int]:
    """Rows of each split whose key is also in a higher split, after the rule: all 0 where it was applied."""
    priority = [s for s in priority if s in frames]
    return {f"{s}&{h}": n for s, counts in _overlaps(frames, priority).items() for h, n in counts.items()}


def conflict_message(task: str, report: dict) -> str | None:
    """One line for the console naming the conflicting texts, or None when there are none."""
    n = report["conflicting_label_texts"]
    if not n:
        return None
    rows = sum(report["conflicting_label_rows"].values())
    shown = "; ".join(f"{e['text'][:60]!r} {e['labels']}" for e in report["conflicting_label_examples"])
    action = "dropped" if report["applied"] else "kept (published splits)"
    return f"{task}: {n} text(s) carry conflicting labels ({rows} row(s), {action}), e.g. {shown}"
