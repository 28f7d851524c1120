"""What the python-backend models in triton_repo/ run inside Triton.

Kept free of torch (transformers' tokenizer and onnxruntime only) so the
stub's import stays light. Both flavours use it: python-onnx runs
Preprocessor + ONNX Runtime + ServingMetrics in one model; ensemble-onnx
splits them into a preprocess and a postprocess model around the encoder.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

# Scores are expected grade indices in [0, n_grades - 1]; quarter-grade buckets show the shape.
SCORE_BUCKET_STEP = 0.25
STUDENT_META = "adore_student.json"  # adore.student.model.META, not imported: that module pulls in torch


class Preprocessor:
    """Raw (query, title, attributes) rows -> the encoder's int64 inputs, as distill trained them."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        from ..attributes import BrandLexicon
        from ..student import text

        with open(os.path.join(folder, STUDENT_META)) as f:
            self.meta = json.load(f)
        self.lexicon = BrandLexicon(self.meta["brands"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._text = text

    def encode(self, queries, titles, attrs, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        texts = [self._text.item_text(t, a, self.lexicon, self.meta["use_attributes"]) for t, a in zip(titles, attrs)]
        enc = self._text.encode(self.tokenizer, self.meta.get("architecture", self._text.CROSS_ENCODER),
                                self.meta["max_length"], queries, texts, "np", pad_to_max)
        return {k: v.astype(np.int64) for k, v in enc.items()}


def request_rows(pb_utils, request, parse: bool = True) -> tuple[list[str], list[str], list]:
    """QUERY, TITLE and the optional ATTRIBUTES (one JSON object per row) of one request. parse=False
    keeps each row's attributes as the JSON text sent ("" where absent): the bi-encoder split reads
    catalogue items by that text without parsing it (bi_encoder.BiEncoderScorer.items), and
    attribute_dicts parses them where a dict is needed."""
    queries = [_s(v) for v in pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)]
    titles = [_s(v) for v in pb_utils.get_input_tensor_by_name(request, "TITLE").as_numpy().reshape(-1)]
    attrs_t = pb_utils.get_input_tensor_by_name(request, "ATTRIBUTES")
    attrs = [_s(v) for v in attrs_t.as_numpy().reshape(-1)] if attrs_t is not None else [""] * len(queries)
    return queries, titles, attribute_dicts(attrs) if parse else attrs


def attribute_dict(attrs):
    """One row's attributes as a dict: JSON text as sent ("" for none) parsed, a dict kept."""
    return json.loads(attrs or "{}") if isinstance(attrs, str) else attrs


def attribute_dicts(attrs: list) -> list:
    return [attribute_dict(a) for a in attrs]


def cpu_limit() -> int:
    """CPUs this process may use: its affinity, capped by the container's CPU limit (cgroup v2 cpu.max,
    v1 cfs quota) rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file:
                with open(period_file) as f:
                    fields.append(f.read().strip())
            if fields[0] not in ("max", "-1"):
                return max(1, min(cpus, -(-int(fields[0]) // int(fields[1]))))
        except (OSError, ValueError, IndexError):
            continue
    return cpus


def ort_threads(model_config: dict) -> int:
    """ONNX Runtime threads per model instance: ADORE_ORT_THREADS, else the CPU limit shared by the
    instances of the config's instance_group (more threads than CPUs only makes them wait on each other)."""
    if os.environ.get("ADORE_ORT_THREADS"):
        return int(os.environ["ADORE_ORT_THREADS"])
    instances = sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1
    return max(1, cpu_limit() // instances)


SPINNING = ("run", "1", "0")  # ADORE_ORT_SPINNING's values; the first is the default


def session_options(threads: int | None):
    """ONNX Runtime options of a served session: THREADS intra-op threads (None: ORT's own choice), one
    inter-op thread, and ADORE_ORT_SPINNING: "run" (default) lets the intra-op threads spin while a run
    lasts and stops them when it returns (session.force_spinning_stop); "1" also keeps them spinning
    after it, waiting for the next run (ORT's own default); "0" never spins. Threads spinning between
    runs hold the cores that the server, the stub, the client and other models' sessions need: on two
    cores that cost a one-query request through Triton half its speed when two models took turns
    (docs/serving.md), while spinning inside a run keeps the threads' hand-offs between operators fast."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    spinning = os.environ.get("ADORE_ORT_SPINNING", SPINNING[0])
    if spinning not in SPINNING:
        raise ValueError(f"ADORE_ORT_SPINNING must be one of {', '.join(SPINNING)}, not {spinning!r}")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "0" else "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1" if spinning == "run" else "0")
    return opts


def version_logits(folder: str, threads: int, pre: Preprocessor):
    """logits(queries, titles, attrs) as a python-onnx version serves them: a bi-encoder's split when the
    folder has one (each query embedded once, items from the table), else the full ONNX graph. Each
    row's attrs: a dict or the JSON text sent (request_rows with parse=False)."""
    import onnxruntime as ort

    from . import bi_encoder

    if bi_encoder.is_split(folder):
        return bi_encoder.BiEncoderScorer(folder, threads, pre).logits
    session = ort.InferenceSession(os.path.join(folder, "model.onnx"), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def full_graph(queries, titles, attrs):
        enc = pre.encode(queries, titles, attribute_dicts(attrs))
        return session.run(None, {k: v for k, v in enc.items() if k in names})[0]

    return full_graph


def batched_logits(rows_per_request: list[tuple[list, list, list]], logits_fn) -> list[np.ndarray]:
    """Score the requests Triton's dynamic batcher hands over together in one call of logits_fn
    (one ONNX Runtime run; a bi-encoder embeds each distinct query once), then split per request."""
    cols = [sum((list(r[c]) for r in rows_per_request), []) for c in range(3)]
    logits = logits_fn(*cols) if cols[0] else np.zeros((0, 0), np.float32)
    bounds = np.cumsum([0] + [len(r[0]) for r in rows_per_request])
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def probs_and_score(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over grades and the expected grade index, shaped (n, grades) and (n, 1)."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    score = (probs @ np.arange(probs.shape[1], dtype=np.float32)).reshape(-1, 1).astype(np.float32)
    return probs, score


def scored_responses(pb_utils, logits: list[np.ndarray], metrics: "ServingMetrics", log=None, rows=None) -> list:
    """The responses (PROBS, SCORE) of the requests of one execute call, from their grade logits; the
    serving metrics count them all at once and, with a request log, each request's kept rows (QUERY,
    TITLE, ATTRIBUTES as request_rows gives them, parsed or not) are written."""
    scored = [probs_and_score(x) for x in logits]
    if scored:
        metrics.record(np.concatenate([p for p, _ in scored]), np.concatenate([s for _, s in scored]))
    if log is not None and rows is not None:
        for (queries, titles, attrs), (probs, _) in zip(rows, scored):
            log.record(queries, titles, attribute_dicts(attrs), probs)
    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBS", p), pb_utils.Tensor("SCORE", s)])
            for p, s in scored]


def request_log(folder: str, model: str, version: str):
    """The version's request log (promotion.requestLog, in the version folder), or None."""
    from .request_log import LogSettings, RequestLog

    settings = LogSettings.read(folder)
    return RequestLog(settings, model, version) if settings else None


def config_parameter(model_config: dict, key: str, default: str) -> str:
    return model_config.get("parameters", {}).get(key, {}).get("string_value", default)


def score_bounds(n_grades: int) -> list[float]:
    """The upper bounds of adore_score's buckets: quarter grades up to the top grade index (then +Inf)."""
    return [round(float(b), 4) for b in np.arange(SCORE_BUCKET_STEP, n_grades - 1 + 1e-9, SCORE_BUCKET_STEP)]


def bucket_increments(score: np.ndarray, bounds: list[float]) -> np.ndarray:
    """How many of the scores fall at or below each bound, and in all (+Inf): the cumulative counts a
    Prometheus histogram adds for these observations."""
    s = np.sort(np.asarray(score, float).reshape(-1))
    return np.append(np.searchsorted(s, bounds, side="right"), len(s))


class ServingMetrics:
    """Custom metrics on Triton's metrics port, the signals the operator's next-round trigger reads.

    adore_score as the series of a Prometheus histogram of expected-grade scores
    (adore_score_bucket{le}, adore_score_sum, adore_score_count), adore_predictions_total
    and adore_low_confidence_total (rows whose top grade probability is below
    the threshold), all labelled {model, version}. The low-confidence share is
    rate(adore_low_confidence_total) / rate(adore_predictions_total); histogram_quantile
    reads adore_score_bucket as it would any histogram's buckets.

    Why counters, not the python backend's HISTOGRAM: its Metric.observe takes one value, and
    every metric call is a round trip to the Triton process (25-35 us,
    benchmarks/triton_metric_cost.py), so a 100-row request paid about 3 ms in observes. Here the
    buckets are counted in numpy. Why a flush thread: even one increment per bucket plus four is
    about 13 round trips (0.4 ms) on every request, a tenth of what Triton adds to a 100-pair
    bi-encoder request at concurrency 1 (docs/serving.md). record() only adds to a numpy total; a
    daemon thread sends what accumulated every flush_seconds (Prometheus scrapes every 15 s or so, so
    the counters lag by at most flush_seconds), and close() sends the rest. flush_seconds 0: every
    record() sends at once.
    """

    def __init__(self, pb_utils, model: str, version: str, n_grades: int, threshold: float, flush_seconds: float = 1.0):
        labels = {"model": model, "version": str(version)}
        mf = pb_utils.MetricFamily
        self.threshold = threshold
        # The families must outlive their metrics (the stub checks), so keep references to both.
        self.families = [
            mf(name="adore_score_bucket", description="Served pairs whose expected-grade score is at most le",
               kind=mf.COUNTER),
            mf(name="adore_score_sum", description="Sum of the expected-grade scores of served pairs", kind=mf.COUNTER),
            mf(name="adore_score_count", description="Served pairs counted in adore_score", kind=mf.COUNTER),
            mf(name="adore_predictions_total", description="Query-item pairs scored", kind=mf.COUNTER),
            mf(name="adore_low_confidence_total",
               description=f"Pairs whose top grade probability is below {threshold}", kind=mf.COUNTER),
        ]
        self.bounds = score_bounds(n_grades)
        buckets = [self.families[0].Metric(labels={**labels, "le": f"{b:g}"}) for b in self.bounds] + \
            [self.families[0].Metric(labels={**labels, "le": "+Inf"})]
        # One counter per slot of pending: the buckets, then sum, count, predictions, low confidence.
        self.counters = buckets + [f.Metric(labels=labels) for f in self.families[1:]]
        self.pending = np.zeros(len(self.counters))
        self.lock = threading.Lock()
        self.flush_seconds = flush_seconds
        self.stopped = threading.Event()
        self.thread = None
        if flush_seconds > 0:
            self.thread = threading.Thread(target=self._flush_every, name="adore-metrics", daemon=True)
            self.thread.start()

    def record(self, probs: np.ndarray, score: np.ndarray) -> None:
        n = float(len(probs))
        if not n:
            return
        score = np.asarray(score, float)
        adds = np.concatenate([bucket_increments(score, self.bounds),
                               [score.sum(), n, n, float((probs.max(-1) < self.threshold).sum())]])
        with self.lock:
            self.pending += adds
        if self.thread is None:
            self.flush()

    def flush(self) -> None:
        """Send what accumulated since the last flush: one increment per counter that moved."""
        with self.lock:
            adds, self.pending = self.pending, np.zeros(len(self.counters))
        for metric, add in zip(self.counters, adds):
            if add:  # an increment of 0 is a round trip that changes nothing
                metric.increment(float(add))

    def close(self) -> None:
        """Stop the flush thread and send the rest (the model's finalize calls this before dropping the metrics)."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        self.flush()

    def _flush_every(self) -> None:
        while not self.stopped.wait(self.flush_seconds):
            self.flush()


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)
