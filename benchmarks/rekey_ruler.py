"""A copy of a RULER NIAH folder with every needle's key and value replaced by fresh random
ones of the same kind, so that a run on it shows whether a score depends on the development
set's particular strings (the issue's other samples have other keys and values).

Every needle "One of the special magic {numbers|uuids|words} for KEY is: VALUE." is found in
each sample's input; each distinct KEY gets a new key (a uuid for a uuid; otherwise an
adjective-noun pair recombined from the words of all the folder's keys, never one of its
pairs) and each VALUE a new value (same digit count, or a new uuid), replaced consistently in
the input, the answer prefix and the outputs.

    python benchmarks/rekey_ruler.py --data ../shared/data/ruler_niah --out /tmp/ruler_rekeyed
    larimar-ext ruler --data /tmp/ruler_rekeyed --out benchmarks/results/ruler/rekeyed
"""
from __future__ import annotations

import argparse
import json
import random
import re
import uuid
from pathlib import Path

NEEDLE = re.compile(r"One of the special magic \w+ for (\S+) is: ?(\S+?)\.(?:\s|$)")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    files = sorted(Path(args.data).glob("*/*/validation.jsonl"))
    rows = {f: [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in files}
    old_pairs = {k for rs in rows.values() for r in rs for k, _ in NEEDLE.findall(r["input"])
                 if not UUID.match(k)}
    firsts = sorted({k.split("-")[0] for k in old_pairs})
    seconds = sorted({k.split("-", 1)[1] for k in old_pairs if "-" in k})
    for f, rs in rows.items():
        out = []
        for r in rs:
            swap: dict[str, str] = {}
            for key, value in NEEDLE.findall(r["input"]):
                if key not in swap:
                    new = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if UUID.match(key) \
                        else None
                    while new is None or new in old_pairs or new in swap.values():
                        new = f"{rng.choice(firsts)}-{rng.choice(seconds)}"
                    swap[key] = new
                if value not in swap:
                    swap[value] = (str(uuid.UUID(int=rng.getrandbits(128), version=4))
                                   if UUID.match(value) else
                                   str(rng.randrange(10 ** (len(value) - 1), 10 ** len(value))))
            pattern = re.compile("|".join(re.escape(s)
                                          for s in sorted(swap, key=len, reverse=True)))
            sub = (lambda text: pattern.sub(lambda m: swap[m.group()], text)) if swap else str
            out.append({**r, "input": sub(r["input"]), "answer_prefix": sub(r["answer_prefix"]),
                        "outputs": [sub(o) for o in r["outputs"]]})
        dest = Path(args.out) / f.relative_to(args.data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("".join(json.dumps(r) + "\n" for r in out))
        print(f"{dest}: {len(out)} samples")


if __name__ == "__main__":
    main()
