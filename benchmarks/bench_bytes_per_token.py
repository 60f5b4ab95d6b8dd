"""Bytes per token of a long-context memory of distinct text, in memory and on disk, with
the recall mode's slot-id values (``values="tokens"``, the default) beside the latents.

The text: plain-text files of Debian's documentation and licences (``/usr/share/doc``,
``/usr/share/common-licenses``; not the model's training sources, which are man pages and
Python docstrings), in sorted path order, until the memory holds ``--tokens`` distinct
tokens (decoder tokens of its distinct segments, a window's overlap with the one before it
counted once).

In memory, everything the memory holds is counted: the kernel store (``nbytes``) plus what
``tracemalloc`` sees the Python side keep (segment texts, row maps, the lexical index),
traced from just before the memory is made; the growth of the process's RSS is printed
beside it. On disk: the folder ``save`` writes.

The same decoder input: the first ``--check`` distinct segments are also ingested with
latent values, and every live slot's stored id is compared with what the decoder reads
from the latent (the question-time snap, ``prefix(readouts, table)``, over readouts in
groups of 1 to 6 as questions read them).

    python benchmarks/bench_bytes_per_token.py [--tokens 1000000] [--check 2000] [--quick]
"""
from __future__ import annotations

import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

DOC_DIRS = ("/usr/share/doc", "/usr/share/common-licenses")
TEXT_NAMES = ("readme", "copyright", "news", "changelog", "authors", "todo", "faq")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
NOT_TEXT = {".gz", ".xz", ".bz2", ".zip", ".html", ".htm", ".css", ".js", ".json", ".png",
            ".jpg", ".gif", ".svg", ".pdf", ".ps", ".py", ".c", ".h", ".sh", ".el", ".xml"}


def extra(p) -> None:
    p.add_argument("--tokens", type=int, default=1_000_000, help="distinct tokens to hold")
    p.add_argument("--check", type=int, default=2000,
                   help="segments whose slot ids are compared with their latents' snap")
    p.add_argument("--threads", type=int, default=cm.NUM_THREADS)


def doc_files(dirs=DOC_DIRS):
    """Plain-text files of the documentation folders, sorted: README*, copyright, NEWS ...,
    *.txt / *.md / *.rst and the licences (no compressed, HTML, image or source files)."""
    out = []
    for d in dirs:
        licences = Path(d).name == "common-licenses"
        for f in sorted(Path(d).rglob("*")):
            suffix = f.suffix.lower()
            if not f.is_file() or f.is_symlink() or suffix in NOT_TEXT:
                continue
            if licences or suffix in TEXT_SUFFIXES or f.name.lower().startswith(TEXT_NAMES):
                out.append(f)
    return out


def read_text(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def distinct_tokens(mem, texts) -> int:
    """Decoder tokens of distinct segments, each window's overlap with the one before it
    counted once (what the memory holds that no other row holds)."""
    counts = mem.segmenter.counter.counts(list(texts))
    return int(sum(counts) - sum(mem.segments.place(t).overlap for t in texts))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def check_same_input(model, torch, lat, tok) -> dict:
    """Each live slot's stored id against the question-time snap of its stored latent."""
    table = model.decoder.get_input_embeddings().weight
    segs = [s for s in lat.segments.stored() if tok.segments.row_of(s) is not None]
    rows_l = np.array([lat.segments.row_of(s) for s in segs])
    rows_t = np.array([tok.segments.row_of(s) for s in segs])
    z = torch.as_tensor(lat.store.reconstruct(rows_l))
    ids = torch.as_tensor(tok.store.reconstruct(rows_t)).long()
    slots = mismatched = masks = 0
    rng = np.random.default_rng(0)
    at = 0
    with torch.no_grad():
        while at < len(segs):
            r = int(rng.integers(1, 7))                   # a question reads 1 to 6 rows
            soft, live = model.prefix(z[at:at + r], table)
            want = model.prefix.nearest_ids(soft, table)
            got = ids[at:at + r]
            masks += int((live != (got >= 0)).sum())
            slots += int(live.sum())
            mismatched += int((want[live] != got[live]).sum())
            at += r
    return {"segments": len(segs), "live_slots": slots, "mismatched_slots": mismatched,
            "mismatched_live_masks": masks}


def ingest(mem, files, target, progress=True):
    """Ingest files (one stream, documents apart) until ``target`` distinct tokens."""
    held, used, seen = 0, 0, 0
    for f in files:
        text = read_text(f)
        if not text or not text.strip():
            continue
        before = len(mem.segments)
        mem.ingest(text + "\n\n")
        new = mem.segments.texts(before)
        held += distinct_tokens(mem, new) if new else 0
        used += 1
        seen += len(text)
        if progress and used % 50 == 0:
            print(f"  {used} files, {held:,} distinct tokens, {len(mem):,} rows", flush=True)
        if held >= target:
            break
    return held, used, seen


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import torch

    from larimar_ext.longcontext.memory import LongContextMemory
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar(), n=args.threads)
    target = 50_000 if args.quick else args.tokens
    check = 200 if args.quick else args.check
    model = LarimarModel.from_pretrained()
    files = doc_files()
    LongContextMemory(model).ingest("A warm-up sentence. Another one.")   # lazy imports
    gc.collect()
    cm.trim_heap()
    rss0 = cm.rss_bytes()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    mem = LongContextMemory(model)
    t0 = time.perf_counter()
    held, used, chars = ingest(mem, files, target)
    seconds = time.perf_counter() - t0
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    cm.trim_heap()
    rss = cm.rss_bytes() - rss0
    store = mem.store.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        mem.save(Path(tmp) / "m")
        disk = folder_bytes(Path(tmp) / "m")
    in_memory = store + traced
    result = {"config": {"tokens_target": target, "files": used, "chars": chars,
                         "threads": args.threads, "values": mem.values},
              "distinct_tokens": held, "rows": len(mem), "ingested_tokens": mem.stats["tokens"],
              "ingest_seconds": seconds, "store_bytes": store, "python_bytes": traced,
              "rss_growth_bytes": rss, "disk_bytes": disk,
              "bytes_per_token_memory": in_memory / held,
              "bytes_per_token_store": store / held, "bytes_per_token_disk": disk / held,
              "bytes_per_token_rss": rss / held}
    print(f"{held:,} distinct tokens from {used} files, {len(mem):,} rows, "
          f"ingested in {seconds:.0f} s ({mem.stats['tokens'] / seconds:,.0f} tokens/s)")
    print(cm.md_table(["what", "bytes", "bytes / token"], [
        ["store (keys + slot ids)", cm.fmt_bytes(store), f"{store / held:.1f}"],
        ["Python side (tracemalloc)", cm.fmt_bytes(traced), f"{traced / held:.1f}"],
        ["**in memory**", cm.fmt_bytes(in_memory), f"**{in_memory / held:.1f}**"],
        ["RSS growth", cm.fmt_bytes(rss), f"{rss / held:.1f}"],
        ["**on disk**", cm.fmt_bytes(disk), f"**{disk / held:.1f}**"]]))
    # the same segments with latent values: bytes, and the decoder's input compared
    lat, tok = LongContextMemory(model, values="latent"), LongContextMemory(model)
    for m in (lat, tok):
        for f in files:
            text = read_text(f)
            if text and text.strip():
                m.ingest(text + "\n\n")
            if len(m) >= check:
                break
    same = check_same_input(model, torch, lat, tok)
    result["same_input"] = same
    result["latent_store_bytes_per_row"] = lat.store.nbytes / len(lat)
    result["tokens_store_bytes_per_row"] = tok.store.nbytes / len(tok)
    print(f"slot ids against the latents' snap: {same['mismatched_slots']} of "
          f"{same['live_slots']:,} live slots differ over {same['segments']:,} segments "
          f"({same['mismatched_live_masks']} live masks); store bytes per row "
          f"{result['latent_store_bytes_per_row']:,.0f} (latents) -> "
          f"{result['tokens_store_bytes_per_row']:,.0f} (slot ids)")
    result["environment"] = cm.machine_info(torch=torch)
    cm.report_foreign_load(result, args)
    targets = [
        {"name": "bytes per token in memory", "value": result["bytes_per_token_memory"],
         "op": "<=", "threshold": 100.0},
        {"name": "bytes per token on disk", "value": result["bytes_per_token_disk"],
         "op": "<=", "threshold": 100.0},
        {"name": "slot ids differing from the latents' snap", "value": same["mismatched_slots"],
         "op": "<=", "threshold": 0},
    ]
    return cm.keep_result("bytes_per_token", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
