"""Build metarun-predict folders from Omniglot characters a model never saw in training.

Usage: python scripts/omniglot_predict_folders.py OUT [--root ../shared/data/omniglot]
       [--way 5] [--shot 1] [--seed 0]
Picks `--way` characters of the meta-test split of `dataset=omniglot
dataset.background=small1+small2 dataset.split=random` (split_seed 0, as the runs of
docs/results.md), copies `--shot` drawings of each into OUT/support/<character>/ and the
other drawings into OUT/query/ named `<character>__<file>.png`, so accuracy can be read
off metarun-predict's CSV (see --score).
  python scripts/omniglot_predict_folders.py OUT --score predictions.csv
"""

from __future__ import annotations

import argparse
import csv
import random
import zipfile
from pathlib import Path

from metarun.data.omniglot import ARCHIVES, Omniglot


def build(out: Path, root: Path, way: int, shot: int, seed: int) -> None:
    ds = Omniglot(root=str(root), background="small1+small2", split="random", download=False)
    chosen = random.Random(seed).sample(ds.class_names["test"], way)
    for key in ("small1", "small2"):
        with zipfile.ZipFile(root / ARCHIVES[key][0]) as zf:
            for name in chosen:
                members = sorted(
                    m for m in zf.namelist() if f"/{name}/" in m and m.endswith(".png")
                )
                if not members or (out / "support" / name.replace("/", "-")).exists():
                    continue
                label = name.replace("/", "-")
                (out / "support" / label).mkdir(parents=True)
                (out / "query").mkdir(parents=True, exist_ok=True)
                for i, member in enumerate(members):
                    target = (
                        out / "support" / label / Path(member).name
                        if i < shot
                        else out / "query" / f"{label}__{Path(member).name}"
                    )
                    target.write_bytes(zf.read(member))
    print(f"{way} unseen characters, {shot} support image(s) each, queries in {out / 'query'}")


def score(predictions: Path) -> None:
    rows = list(csv.DictReader(predictions.open()))
    right = sum(Path(r["file"]).name.split("__")[0] == r["predicted"] for r in rows)
    print(f"accuracy {right / len(rows):.4f} ({right}/{len(rows)} queries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", type=Path, help="a metarun-predict CSV to score instead")
    args = parser.parse_args()
    if args.score:
        score(args.score)
    else:
        build(args.out, args.root, args.way, args.shot, args.seed)


if __name__ == "__main__":
    main()
