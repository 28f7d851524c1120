"""annotate: the aligned teacher labels the unlabelled pool.

Each record keeps the grade, the probabilities over the grade scheme, the
rationale and the key attributes (the teacher's own, as parsed from its
rationale, and the fast extractor's). Rationales that do not parse are
kept with grade null and counted; they are never turned into a grade.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .. import attributes as attr
from ..data.contract import write_jsonl
from ..metrics import nll
from ..teacher import correction
from ..teacher.llm import JudgeSettings
from . import common
from .base import StageContext, StageError, merge_shards, shards_of, stage_dir


def label(ctx: StageContext, shard: tuple[int, int] | None) -> dict:
    """Label the pool (or the pairs of one shard: every N-th pair from index i).

    The whole pool (not a shard) is then corrected with the seed-fitted grade offsets."""
    t = ctx.spec.teacher
    items = common.catalogue(ctx)
    chosen = select_pool(ctx, items)
    pool = chosen.llm if shard is None else chosen.llm[shard[0]::shard[1]]
    brands = common.brands(items)
    teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    start = time.time()
    desc = "annotate" if shard is None else f"annotate shard {shard[0] + 1}/{shard[1]}"
    direct = direct_pairs(ctx, pool)
    judged = judge_mixed(teacher, [(p.query, items[p.item_id]) for p in pool], direct, desc)
    seconds = time.time() - start
    records = []
    for p, j, d in zip(pool, judged, direct):
        item = items[p.item_id]
        rec = {"query": p.query, "item_id": p.item_id, "grade": j.grade, "probs": j.probs,
               "rationale": j.rationale, "judging": DIRECT if d else RATIONALE,
               "query_attributes": attr.extract(p.query, brands=brands),
               "item_attributes": attr.extract(item.title, item.attributes, brands)}
        if j.parsed is not None:
            rec["teacher_attributes"] = {"query": j.parsed.query_attributes, "item": j.parsed.item_attributes,
                                         "comparison": j.parsed.comparison}
        if j.grade is None:
            rec["error"] = j.error
        records.append(rec)
    correction_metrics = correct_on_seed(ctx, records, teacher, items, chosen) if shard is None else {}
    write_jsonl(ctx.out / "annotations.jsonl", records)
    return {**summarise(records, seconds, t, teacher.settings.batch_size), "poolSelection": chosen.report,
            **correction_metrics}


@dataclass
class Selection:
    """select_pool's answer: the pairs the LLM labels (llm), the pairs the evidence alone labels (rest), how
    they were chosen (report), and every candidate in prepare's order (pool, then evidence pool). It keeps
    the evidence of the candidates and of the seed once computed: uncertain selection needs it to choose,
    the correction to fit and to label, and on the Home Depot example each pass over its 8,000 candidates is a MiniLM
    encoding of all of them."""
    llm: list
    rest: list
    report: dict
    candidates: list
    seed: list
    _rows: dict = field(default_factory=dict)  # "candidates" / "seed" -> evidence_rows of them
    _x: dict = field(default_factory=dict)  # the same keys -> (names, evidence matrix or None)
    _at: dict = field(default_factory=dict)  # (query, item_id) -> position among the candidates

    def rows(self, which: str, items) -> list[tuple]:
        if which not in self._rows:
            pairs = self.candidates if which == "candidates" else self.seed
            self._rows[which] = evidence_rows(pairs, items, common.brands(items))
        return self._rows[which]

    def evidence(self, ctx: StageContext, items, which: str) -> tuple[list[str], np.ndarray | None]:
        """(names, x) of the candidates or of the seed, computed on first use only."""
        if which not in self._x:
            self._x[which] = evidence(ctx, items, self.rows(which, items))
        return self._x[which]

    def index(self, items) -> dict:
        """(query, item_id) -> the candidate's position, to read its rows and evidence by pair."""
        if not self._at:
            self._at = {(r[0], r[1]): i for i, r in enumerate(self.rows("candidates", items))}
        return self._at

    def rows_of(self, pairs, items) -> list[tuple]:
        """evidence_rows of candidate pairs, read from the candidates' (their attributes extracted once)."""
        at, rows = self.index(items), self.rows("candidates", items)
        return [rows[at[(p.query, p.item_id)]] for p in pairs]

    def features_of(self, ctx: StageContext, items, rows: list[tuple]) -> np.ndarray | None:
        """The evidence of rows (as evidence_rows gives them), read from the candidates' where they are
        candidates (one computation whichever pairs the LLM was given); any other row (a record of an
        older pool) is computed."""
        names, x = self.evidence(ctx, items, "candidates")
        if x is None:
            return None
        at = self.index(items)
        missing = [r for r in rows if (r[0], r[1]) not in at]
        extra = iter(evidence(ctx, items, missing)[1] if missing else ())
        return np.array([x[at[(r[0], r[1])]] if (r[0], r[1]) in at else next(extra) for r in rows]
                        ).reshape(len(rows), len(names))


def select_pool(ctx: StageContext, items) -> Selection:
    """The pairs the LLM labels, the pairs the evidence alone labels, what was chosen how (a Selection).

    random: prepare's pool and evidence pool as drawn. uncertain: of all those candidates, the LLM
    labels the dataset.poolSize pairs the evidence alone is least sure about (the highest entropy of
    the evidence-only correction fitted on the seed), the evidence labels the rest: the LLM's budget
    goes where cheap signals disagree or say nothing. Deterministic, so every shard chooses alike."""
    ds = ctx.spec.dataset
    pool = common.pairs(ctx, "pool")
    extra = common.pairs(ctx, "evidence_pool") if ctx.input("prepare", "evidence_pool.jsonl").is_file() else []
    chosen = Selection(pool, extra, {"method": "random", "pool": len(pool), "evidencePool": len(extra)},
                       pool + extra, common.pairs(ctx, "seed"))
    if ds.pool_selection == "random" or not extra:
        return chosen
    names, cand_x = chosen.evidence(ctx, items, "candidates")
    if not names or len(chosen.seed) < MIN_SEED_FOR_CORRECTION:
        raise StageError("spec.dataset.poolSelection: uncertain needs evidence (stages.annotate.ruleEvidence or "
                         f"embeddingEvidence) and at least {MIN_SEED_FOR_CORRECTION} seed pairs to measure uncertainty with")
    _, seed_x = chosen.evidence(ctx, items, "seed")
    fit = correction.fit(None, common.gold(chosen.seed, ctx.spec.grades), seed_x, names, len(ctx.spec.grades),
                         ctx.spec.stages.annotate.evidence_weights, (None, cand_x))
    probs = fit.apply(None, cand_x)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    order = np.argsort(-entropy, kind="stable")
    top = set(order[:len(pool)].tolist())
    chosen.llm = [p for i, p in enumerate(chosen.candidates) if i in top]
    chosen.rest = [p for i, p in enumerate(chosen.candidates) if i not in top]
    chosen.report = {"method": "uncertain", "pool": len(chosen.llm), "evidencePool": len(chosen.rest),
                     "meanEntropyChosen": round(float(entropy[order[:len(pool)]].mean()), 4),
                     "meanEntropyRest": round(float(entropy[order[len(pool):]].mean()), 4) if chosen.rest else None}
    return chosen


RATIONALE, DIRECT = "rationale", "direct"


def direct_pairs(ctx: StageContext, pairs) -> list[bool]:
    """Which pairs are judged directly: all without rationale; else all but rationaleShare of them,
    chosen by a hash of (split seed, query, item) so a shard and the whole pool agree."""
    cfg = ctx.spec.stages.annotate
    if not cfg.rationale:
        return [True] * len(pairs)
    if cfg.rationale_share >= 1:
        return [False] * len(pairs)
    seed = ctx.spec.dataset.split_seed
    return [_unit_hash(f"{seed}|{p.query}|{p.item_id}") >= cfg.rationale_share for p in pairs]


def _unit_hash(text: str) -> float:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def judge_mixed(teacher, pairs: list[tuple], direct: list[bool], progress: str) -> list:
    """Judge each pair with chain of thought or directly, as `direct` says; results in input order."""
    out = [None] * len(pairs)
    for mode in (False, True):
        idx = [i for i, d in enumerate(direct) if d == mode]
        if idx:
            label = f"{progress} ({DIRECT if mode else RATIONALE})" if any(direct) and not all(direct) else progress
            for i, j in zip(idx, teacher.judge([pairs[i] for i in idx], direct=mode, progress=label)):
                out[i] = j
    return out


def correct_on_seed(ctx: StageContext, records: list[dict], teacher=None, items=None,
                    chosen: Selection | None = None) -> dict:
    """Weigh the teacher's grade probabilities and the evidence beside them (the key-attribute
    comparison, the bi-encoder cosine) on the human seed (teacher/correction.py), and label every
    record with the result.

    Records keep the teacher's own grade and probabilities as teacher_grade / teacher_probs, the
    evidence as rule_features, and the labels of the two one-source corrections beside the combined
    one (labels.evidence: no LLM; labels.teacher: the LLM alone), so a student can be trained on
    each (distill.labelSource) and the LLM's share measured. The seed's leave-one-out estimate of
    each is in the metrics (llmShare). chosen: select_pool's answer where the caller has it (its evidence
    is reused, not computed again).
    """
    cfg, grades = ctx.spec.stages.annotate, ctx.spec.grades
    if not cfg.calibrate:
        return {"seedCorrection": "off (stages.annotate.calibrate is false)"}
    seed = common.pairs(ctx, "seed")
    if len(seed) < MIN_SEED_FOR_CORRECTION:
        return {"seedCorrection": f"skipped: {len(seed)} seed pairs (< {MIN_SEED_FOR_CORRECTION})"}
    items = common.catalogue(ctx) if items is None else items
    if teacher is None:
        teacher = common.load_teacher(ctx, common.adapter_chain(ctx, after=("sft", "align")), items)
    chosen = select_pool(ctx, items) if chosen is None else chosen
    names, seed_x = chosen.evidence(ctx, items, "seed")
    seed_gold = common.gold(seed, grades)
    live = [r for r in records if r["probs"] is not None]
    fx = chosen.features_of(ctx, items, [(r["query"], r["item_id"], r["query_attributes"], r["item_attributes"])
                                         for r in live])
    rest_rows = chosen.rows_of(chosen.rest, items)
    rest_x = chosen.features_of(ctx, items, rest_rows)
    # The evidence is standardised over every pair it labels or could: the LLM's and the rest together, so
    # the evidence-only labels are one function whichever pairs the LLM was given (dataset.poolSelection).
    every_x = None if fx is None else np.vstack([fx, rest_x])
    how = cfg.evidence_weights
    evidence_only = correction.fit(None, seed_gold, seed_x, names, len(grades), how, (None, every_x)) if names else None
    fits = {}
    for mode in sorted({r.get("judging", RATIONALE) for r in live}, reverse=True):  # rationale first
        judged = teacher.judge([(p.query, items[p.item_id]) for p in seed], direct=mode == DIRECT,
                               progress=f"annotate: judging the seed for the correction ({mode})")
        ok = [i for i, j in enumerate(judged) if j.probs is not None]
        if len(ok) < MIN_SEED_FOR_CORRECTION:
            fits[mode] = {"seedCorrection": f"skipped: only {len(ok)} seed rationales parsed"}
            continue
        probs = np.array([judged[i].probs for i in ok])
        of_mode = [i for i, r in enumerate(live) if r.get("judging", RATIONALE) == mode]
        ref = (np.array([live[i]["probs"] for i in of_mode]), every_x)
        x = None if seed_x is None else seed_x[ok]
        both = correction.fit(probs, seed_gold[ok], x, names, len(grades), how, ref)
        alone = correction.fit(probs, seed_gold[ok], None, [], len(grades), how, (ref[0], None))
        apply_labels(live, of_mode, fx, names, grades, both, alone, evidence_only)
        fits[mode] = {**both.report(grades), **seed_fit(probs, seed_gold[ok], both.apply(probs, x)),
                      "llmShare": llm_share(probs, seed_gold[ok], x, names, len(grades), how, ref)}
    out = dict(fits.pop(RATIONALE, None) or fits.pop(DIRECT, {}))
    if fits:
        out[DIRECT] = fits[DIRECT]  # a pool judged both ways: one fit per way
    if "gradeOffsets" in out:  # else it says why the fit was skipped
        kinds = [k for k, on in (("rule-evidence", bool(names) and cfg.rule_evidence), ("embedding-evidence", cfg.embedding_evidence)) if on]
        out["seedCorrection"] = "teacher" + "".join(f" and {k}" for k in kinds) + f" weighed on the human seed ({how})"
        out["evidenceWeights"] = how
    return {**out, **label_from_evidence(ctx, rest_rows, rest_x, evidence_only, names)}


def apply_labels(records: list[dict], which: list[int], features, names, grades, both, alone, evidence_only) -> None:
    """Label records[i] for i in which with the combined correction; the teacher's own verdict and the
    one-source labels are kept beside."""
    for i in which:
        rec = records[i]
        f = None if features is None else features[i:i + 1]
        tp = np.array([rec["probs"]])
        rec["teacher_grade"], rec["teacher_probs"] = rec["grade"], rec["probs"]
        rec["probs"] = _rounded(both.apply(tp, f)[0])
        rec["grade"] = grades[int(np.argmax(rec["probs"]))]
        rec["labels"] = {"teacher": _rounded(alone.apply(tp)[0])}
        if evidence_only is not None:
            rec["labels"]["evidence"] = _rounded(evidence_only.apply(None, f)[0])
        if f is not None:
            rec["rule_features"] = {n: round(float(v), 4) for n, v in zip(names, f[0])}


def _rounded(p) -> list[float]:
    return [round(float(v), 6) for v in p]


def seed_fit(probs, gold, fixed) -> dict:
    return {"seedAccuracyBefore": round(float((probs.argmax(1) == gold).mean()), 4),
            "seedAccuracyAfter": round(float((fixed.argmax(1) == gold).mean()), 4),
            "seedNllBefore": round(nll(probs, gold), 4), "seedNllAfter": round(nll(fixed, gold), 4)}


def llm_share(probs, gold, x, names, n_grades, how, ref) -> dict:
    """Leave-one-out on the seed: labels from the evidence alone, the LLM alone, and both."""
    out = {"teacher": correction.leave_one_out(probs, gold, None, [], n_grades, how, (ref[0], None)),
           "both": correction.leave_one_out(probs, gold, x, names, n_grades, how, ref)}
    if names:
        out["evidence"] = correction.leave_one_out(None, gold, x, names, n_grades, how, (None, ref[1]))
    return out


def label_from_evidence(ctx: StageContext, rows: list[tuple], x, evidence_only, names) -> dict:
    """Label the pairs the LLM did not judge (select_pool's rest: the evidence pool, as evidence_rows) from
    the evidence alone (x, their features): the seed fit of the evidence without the teacher. Writes
    evidence_labels.jsonl (records shaped like annotations, source "evidence") for distill."""
    if not rows or evidence_only is None:
        if rows:
            return {"evidenceLabels": f"skipped: {len(rows)} evidence-pool pairs but no evidence is switched on"}
        return {}
    grades = ctx.spec.grades
    probs = evidence_only.apply(None, x)
    records = [{"query": q, "item_id": i, "grade": grades[int(np.argmax(pr))], "probs": _rounded(pr),
                "source": "evidence", "query_attributes": qa, "item_attributes": ia,
                "rule_features": {n: round(float(v), 4) for n, v in zip(names, f)}}
               for (q, i, qa, ia), pr, f in zip(rows, probs, x)]
    write_jsonl(ctx.out / common.EVIDENCE_LABELS, records)
    return {"evidenceLabels": len(records), "evidenceOnly": evidence_only.report(grades),
            "evidenceLabelGrades": dict(Counter(r["grade"] for r in records))}


def evidence_rows(pairs, items, brands) -> list[tuple]:
    """(query, item_id, query attributes, item attributes) per pair, as evidence() takes them."""
    return [(p.query, p.item_id, attr.extract(p.query, brands=brands),
             attr.extract(items[p.item_id].title, items[p.item_id].attributes, brands)) for p in pairs]


def evidence(ctx: StageContext, items, rows) -> tuple[list[str], np.ndarray | None]:
    """The evidence the correction weighs beside the teacher, one row per (query, item_id, query
    attributes, item attributes): the fast extractor's key-attribute comparison (ruleEvidence,
    the features named in ruleFeatures) and the bi-encoder cosine of query and title
    (embeddingEvidence). (names, None) when off."""
    cfg = ctx.spec.stages.annotate
    rules = [correction.RULE_FEATURES.index(f) for f in cfg.rule_features] if cfg.rule_evidence else []
    names = [correction.RULE_FEATURES[i] for i in rules] + ([correction.EMBEDDING_FEATURE] if cfg.embedding_evidence else [])
    if not names:
        return names, None
    if not rows:
        return names, np.zeros((0, len(names)))
    cols = []
    if rules:
        every = np.array([correction.rule_features(q, items[i].title, qa, ia) for q, i, qa, ia in rows]).reshape(len(rows), -1)
        cols.append(every[:, rules])
    if cfg.embedding_evidence:
        from ..models import resolve
        from ..similarity import embedder

        enc = embedder(resolve(cfg.embedding_evidence, ctx.resolve(".")), ctx.hardware)
        cols.append(enc.cosine([r[0] for r in rows], [items[r[1]].title for r in rows]).reshape(-1, 1))
    return names, np.hstack(cols)


MIN_SEED_FOR_CORRECTION = 4


def summarise(records: list[dict], seconds: float, t, batch_size: int) -> dict:
    parsed = [r for r in records if r["grade"] is not None]
    if records and not parsed:
        raise StageError(f"annotate: none of {len(records)} rationales parsed; the teacher did not learn the "
                         "rationale format (raise stages.sft.epochs or the seed size)")
    return {"pairs": len(records), "parsed": len(parsed), "unparsed": len(records) - len(parsed),
            "judging": dict(Counter(r.get("judging", RATIONALE) for r in records)),
            "labelSeconds": round(seconds, 2), "pairsPerSecond": round(len(records) / max(seconds, 1e-9), 3),
            "grades": dict(Counter(r["grade"] for r in parsed)),
            "meanConfidence": round(sum(max(r["probs"]) for r in parsed) / len(parsed), 4) if parsed else None,
            "batchSize": batch_size, "maxNewTokens": t.max_new_tokens}


def run(ctx: StageContext) -> dict:
    """One shard: everything. Several: run the shards that are not complete yet, then merge them in pool order."""
    n = ctx.spec.stages.annotate.shards
    if n == 1:
        return label(ctx, None)
    shards = shards_of(ctx)
    records = merge_shards(ctx, shards, "annotations.jsonl")
    items = common.catalogue(ctx)
    chosen = select_pool(ctx, items)
    correction_metrics = correct_on_seed(ctx, records, None, items, chosen)
    write_jsonl(ctx.out / "annotations.jsonl", records)
    seconds = sum(json.loads((stage_dir(ctx.workdir, s.name) / "metrics.json").read_text())["labelSeconds"] for s in shards)
    batch = JudgeSettings.of(ctx.spec.teacher, ctx.hardware).batch_size
    return {**summarise(records, seconds, ctx.spec.teacher, batch), "shards": n, "poolSelection": chosen.report,
            **correction_metrics}


def label_shard(ctx: StageContext, i: int, n: int) -> dict:
    """The annotate stage's shard hook: shard i of n labels every N-th pool pair from index i."""
    return label(ctx, (i, n))
