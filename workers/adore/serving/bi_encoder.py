"""A bi-encoder student served as one: each distinct query embedded once, items read from a table.

A cross-encoder must run its whole network on every (query, item) pair. A bi-encoder's score is a
function of two embeddings, so a request of 100 candidates for one query needs one query embedding
and 100 item embeddings, and the item embeddings do not depend on the query: promote computes them
for the round's catalogue (ITEM_TABLE, keyed by the item text exactly as the student reads it: title
and key attributes), and serving embeds only the items missing from the table. The table also keys
each catalogue item as it arrives (title and attributes, raw_key): the item text needs the attribute
extractor's regular expressions, which cost more than the query's embedding (about 0.4 ms an item on
an AVX2 EPYC, two thirds of a 100-candidate request), so a catalogue item is looked up without it. The grades then come
from the cosine through the student's head (embedder.json), as in the full graph:

    logits = (cos(query, item) * scale * rank + bias) / temperature

Torch-free (onnxruntime and the tokenizer), like backend.py: Triton's python backend imports it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..student.text import EMBEDDER_JSON, EMBEDDER_ONNX, ITEM_TABLE, encode_one_side, item_text
from .backend import Preprocessor, attribute_dict, attribute_dicts, session_options

EMBED_BATCH = 64  # rows per embedder run; rows are sorted by length first, so each run pads little
SENT_MEMO = 200_000  # catalogue items remembered by their text as sent (about 300 bytes each)


def item_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def raw_key(title: str, attrs: dict | None) -> str:
    """The key of an item as a request sends it (title and attributes, whatever their order)."""
    return hashlib.sha1(json.dumps([title, attrs or {}], sort_keys=True).encode("utf-8")).hexdigest()


def is_split(folder: str | Path) -> bool:
    """Whether a version folder carries a bi-encoder's serving split."""
    return (Path(folder) / EMBEDDER_ONNX).is_file() and (Path(folder) / EMBEDDER_JSON).is_file()


class BiEncoderScorer:
    """Grade logits for raw (query, title, attributes) rows from a version folder's serving split.

    `hits` / `misses` count the item embeddings read from the table and computed on the fly; `raw_hits`
    those of the hits found by raw_key, with no item text made."""

    def __init__(self, folder: str | Path, threads: int | None = None, preprocessor=None):
        import onnxruntime as ort

        folder = Path(folder)
        self.pre = preprocessor or Preprocessor(str(folder))
        head = json.loads((folder / EMBEDDER_JSON).read_text())
        self.ranks = np.arange(len(head["bias"]), dtype=np.float32)
        self.scale, self.bias = np.float32(head["scale"]), np.asarray(head["bias"], np.float32)
        self.temperature, self.inputs = float(head["temperature"]), list(head["inputs"])
        self.session = ort.InferenceSession(str(folder / EMBEDDER_ONNX), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.table: dict[str, int] = {}
        self.raw_table: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), np.float32)
        if (folder / ITEM_TABLE).is_file():
            with np.load(folder / ITEM_TABLE) as z:
                self.vectors = z["vectors"].astype(np.float32)
                self.table = {k: i for i, k in enumerate(z["keys"].tolist())}
                if "raw_keys" in z.files:  # tables written before raw keys are read by item text only
                    self.raw_table = dict(zip(z["raw_keys"].tolist(), z["raw_rows"].tolist()))
        self.sent: dict[tuple[str, str], int] = {}  # (title, attribute text as sent) -> table row
        self.hits = self.misses = self.raw_hits = 0

    def item_texts(self, titles, attrs) -> list[str]:
        meta = self.pre.meta
        return [item_text(t, a, self.pre.lexicon, meta["use_attributes"]) for t, a in zip(titles, attrs)]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings (n, d) of texts through the tower, in length-sorted runs of EMBED_BATCH."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for s in range(0, len(order), EMBED_BATCH):
            run = order[s:s + EMBED_BATCH]
            enc = encode_one_side(self.pre.tokenizer, self.pre.meta["max_length"], [texts[i] for i in run], "np")
            emb = self.session.run(None, {k: enc[k].astype(np.int64) for k in self.inputs})[0]
            for i, e in zip(run, emb):
                out[i] = e
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.vectors.shape[1]), np.float32)

    def item_vectors(self, texts: list[str]) -> np.ndarray:
        rows = [self.table.get(item_key(t)) for t in texts]
        missing = sorted({t for t, r in zip(texts, rows) if r is None})
        absent = sum(r is None for r in rows)
        self.misses += absent
        self.hits += len(texts) - absent
        fresh = dict(zip(missing, self.embed(missing))) if missing else {}
        return np.stack([self.vectors[r] if r is not None else fresh[t] for t, r in zip(texts, rows)])

    def catalogue_row(self, title: str, attrs) -> int | None:
        """The table row of a catalogue item as sent (raw_key), or None. attrs: a dict, or the JSON text a
        request sent, whose rows are remembered by (title, text): a catalogue item sent again is one dict
        lookup, not a parse and a raw_key (0.46-0.61 ms of a 100-candidate request through Triton:
        docs/serving.md)."""
        if not isinstance(attrs, str):
            return self.raw_table.get(raw_key(title, attrs))
        row = self.sent.get((title, attrs))
        if row is None:
            row = self.raw_table.get(raw_key(title, attribute_dict(attrs)))
            if row is not None:
                if len(self.sent) >= SENT_MEMO:  # a catalogue that moved on: start over, not grow without end
                    self.sent.clear()
                self.sent[(title, attrs)] = row
        return row

    def items(self, titles, attrs) -> np.ndarray:
        """Item embeddings of raw rows (attrs: dicts or the JSON text sent): catalogue items by raw_key;
        the rest by item text, from the table or embedded."""
        rows = [self.catalogue_row(t, a) for t, a in zip(titles, attrs)] if self.raw_table else [None] * len(titles)
        rest = [i for i, r in enumerate(rows) if r is None]
        self.raw_hits += len(rows) - len(rest)
        self.hits += len(rows) - len(rest)
        if not rest:
            return self.vectors[rows]
        rest_attrs = attribute_dicts([attrs[i] for i in rest])
        fresh = self.item_vectors(self.item_texts([titles[i] for i in rest], rest_attrs))
        out = np.empty((len(rows), fresh.shape[1]), np.float32)
        out[rest] = fresh
        known = [i for i, r in enumerate(rows) if r is not None]
        if known:
            out[known] = self.vectors[[rows[i] for i in known]]
        return out

    def logits(self, queries, titles, attrs) -> np.ndarray:
        distinct = {q: i for i, q in enumerate(dict.fromkeys(queries))}
        q = self.embed(list(distinct))[[distinct[x] for x in queries]]
        cos = (q * self.items(titles, attrs)).sum(-1)
        return ((cos[:, None] * self.scale * self.ranks + self.bias) / self.temperature).astype(np.float32)


def write_item_table(folder: str | Path, titles, attrs, threads: int | None = None) -> dict:
    """Embed every distinct item text of (titles, attrs) into FOLDER/ITEM_TABLE; return counts and seconds."""
    import time

    scorer = BiEncoderScorer(folder, threads)
    every = scorer.item_texts(titles, attrs)
    texts = list(dict.fromkeys(every))
    t0 = time.monotonic()
    vectors = scorer.embed(texts)
    seconds = time.monotonic() - t0
    keys = np.array([item_key(t) for t in texts])
    row = {t: i for i, t in enumerate(texts)}
    raw = dict(zip((raw_key(t, a) for t, a in zip(titles, attrs)), (row[x] for x in every)))
    raw_keys, raw_rows = np.array(list(raw), dtype=str), np.array(list(raw.values()), dtype=np.int64)
    atomic_write(Path(folder) / ITEM_TABLE,
                 lambda f: np.savez(f, keys=keys, vectors=vectors, raw_keys=raw_keys, raw_rows=raw_rows))
    return {"items": len(texts), "seconds": round(seconds, 1), "itemsPerSecond": round(len(texts) / max(seconds, 1e-9), 1),
            "mib": round((Path(folder) / ITEM_TABLE).stat().st_size / 2 ** 20, 1)}
