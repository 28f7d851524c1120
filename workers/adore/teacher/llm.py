"""The teacher LLM: loading with its adapter chain on the stage's hardware, and judging pairs.

Two ways to judge a pair, both reading the grade distribution at the step after 'Grade:'
over each grade's whole token sequence:
- chain of thought (the default): the teacher writes the comparison (and, without the
  attribute pre-fill, the attribute lines) before its grade;
- direct: the prompt ends at 'Grade:' and one forward pass reads the grade, no generation,
  for pools far larger than chain of thought can label. The answer before 'Grade:' holds
  the fast extractor's attribute lines and comparison (steadier for a small teacher) or,
  with directPrefill off, nothing (a capable teacher judges better on its own).
Rows are sorted by length and share one KV cache of the system prompt (teacher/batching.py).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .. import models
from ..data.contract import Item
from ..hardware import CPU_FP32, Hardware
from .batching import PrefixCache, common_prefix_length, length_batches, pack, positions
from .decoding import GradeTokens, RationaleStructure
from .prompt import (GRADE_LINE, PREFILL, Rationale, RationaleParseError, chat_prompt, direct_prefix, parse,
                     rationale_prefix, rule_rationale)

log = logging.getLogger(__name__)


@dataclass
class Judgement:
    grade: str | None            # None when the rationale did not parse
    probs: list[float] | None    # over the grade scheme, lowest grade first
    rationale: str               # the whole answer, pre-fill included (canonical form when parsed)
    error: str | None = None
    parsed: Rationale | None = None  # its four lines; None when unparsed or judged directly without them


@dataclass
class JudgeSettings:
    """How the teacher judges (spec.teacher): generation length, batch, prompt budget."""

    max_new_tokens: int = 48
    batch_size: int = 8
    max_prompt_tokens: int = 384

    # Rows per batch when spec.teacher.batchSize is unset: the shared prefix cache keeps big batches
    # cheap in memory, and generation's per-step overhead is paid once per batch (x8 on a GPU).
    CPU_BATCH = 32

    @classmethod
    def of(cls, teacher_spec, hardware: Hardware) -> "JudgeSettings":
        """The settings of spec.teacher on this hardware."""
        return cls(teacher_spec.max_new_tokens, teacher_spec.batch_size or hardware.batch(cls.CPU_BATCH),
                   teacher_spec.max_prompt_tokens)


@dataclass
class Teacher:
    model: object
    tokenizer: object
    rules: str
    grades: list[str]
    brands: object = None               # attributes.BrandLexicon for the attribute pre-fill
    prefill_attributes: bool = False
    direct_prefill: bool = True          # direct judging: the extractor's lines before 'Grade:' (else 'Grade:' alone)
    hardware: Hardware = CPU_FP32
    settings: JudgeSettings = field(default_factory=JudgeSettings)
    grade_tokens: GradeTokens = None
    demos: object = None                # teacher.demos.DemoBank: in-context demonstrations per pair, or None

    def __post_init__(self):
        if self.grade_tokens is None:
            self.grade_tokens = GradeTokens(self.tokenizer, self.grades)

    @classmethod
    def load(cls, name: str, rules: str, grades: list[str], adapters: list[str | Path] = (), base_dir: Path | None = None,
             brands=None, prefill_attributes: bool = False, hardware: Hardware = CPU_FP32, training: bool = False,
             settings: JudgeSettings | None = None, direct_prefill: bool = True) -> "Teacher":
        """training: the stage fine-tunes the teacher (fp32 master weights on the CPU; see Hardware.weights_dtype)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(name, base_dir)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=hardware.weights_dtype(training)).to(hardware.device)
        for adapter in adapters:
            from peft import PeftModel

            # Merge each stage's adapter so the next stage trains a fresh one on top.
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.eval()
        return cls(model, tok, rules, grades, brands=brands, prefill_attributes=prefill_attributes,
                   direct_prefill=direct_prefill, hardware=hardware, settings=settings or JudgeSettings())

    def prefix(self, query: str, item: Item, direct: bool = False) -> str:
        """The start of the answer written for the model (up to 'Grade:' when direct)."""
        if direct:
            return direct_prefix(query, item, self.brands) if self.direct_prefill else GRADE_LINE
        return rationale_prefix(query, item, self.brands, self.prefill_attributes)

    def answer(self, query: str, item: Item, grade: str, direct: bool = False) -> str:
        """A whole answer for a known grade, as this teacher would write it: the rule rationale, or
        (direct) the pre-fill followed by the grade."""
        if direct:
            return f"{self.prefix(query, item, True)} {grade}"
        return rule_rationale(query, item, grade, self.brands).text()

    def training_pair(self, query: str, item: Item, answer: str, direct: bool = False) -> tuple[str, str]:
        """(prompt, completion) to fine-tune on: what the teacher is shown and what it should write."""
        prefix = self.prefix(query, item, direct)
        return self.prompt(query, item, prefix), self.completion(query, item, answer, direct)

    def prompt(self, query: str, item: Item, prefix: str | None = None) -> str:
        prefix = self.prefix(query, item) if prefix is None else prefix
        demos = self.demos(query, item) if self.demos is not None else ()
        return chat_prompt(self.tokenizer, self.rules, self.grades, query, item, prefix, demos)

    def completion(self, query: str, item: Item, rationale: str, direct: bool = False) -> str:
        """The part of a whole rationale that the model writes after this teacher's prompt."""
        prefix = self.prefix(query, item, direct)
        if not rationale.startswith(prefix):
            raise ValueError(f"rationale does not start with the teacher's pre-fill {prefix!r}: {rationale[:120]!r}")
        return rationale[len(prefix):]

    def prompt_ids(self, query: str, item: Item, prefix: str) -> list[int]:
        """Token ids of the prompt, within max_prompt_tokens: the item's details go first, then its title is cut.
        The end of the prompt (the answer's pre-fill) is never cut."""
        budget = self.settings.max_prompt_tokens
        ids = self._encode(self.prompt(query, item, prefix))
        if len(ids) <= budget:
            return ids
        item = replace(item, description="")
        ids = self._encode(self.prompt(query, item, prefix))
        title = item.title
        while len(ids) > budget and len(title) > 16:
            title = title[: int(len(title) * 0.8)]
            ids = self._encode(self.prompt(query, replace(item, title=title), prefix))
        return ids

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def judge(self, pairs: list[tuple[str, Item]], *, direct: bool = False, sample: bool = False,
              temperature: float = 0.8, seed: int = 0, progress: str | None = None, constrained: bool = True,
              reuse_prefix: bool = True, sort: bool = True) -> list[Judgement]:
        """Judge each pair: a rationale and the grade distribution at the step after 'Grade:'.

        With `constrained` (the default) a logits processor keeps the answer in its four-line
        structure: it writes the line headers itself, caps each free line, and at the grade step
        allows only grades. The probabilities come from the raw logits of that step.
        `reuse_prefix` and `sort` change speed, not results."""
        if not pairs:
            return []
        contiguous_lm_head(self.model)
        torch.manual_seed(seed)
        if self.demos is not None:
            self.demos.prepare(pairs)
        prefixes = [self.prefix(q, item, direct) for q, item in pairs]
        rows = [self.prompt_ids(q, item, pre) for (q, item), pre in zip(pairs, prefixes)]
        # Keep at least one token of every row outside the shared prefix: its logits are needed.
        shared = min(common_prefix_length(rows), min(map(len, rows)) - 1) if reuse_prefix else 0
        out: list[Judgement | None] = [None] * len(pairs)
        bar = tqdm(total=len(pairs), desc=progress, unit="pair", disable=progress is None, mininterval=2)
        with torch.inference_mode(), self.hardware.autocast():
            cache = PrefixCache(self.model, rows[0][:shared], self.hardware.device) if shared > 0 else None
            for batch in length_batches(list(map(len, rows)), self.settings.batch_size, sort):
                batch_rows = [rows[i] for i in batch]
                if direct:
                    probs = self._grade_probs(batch_rows, shared, cache)
                    results = [self._direct(prefixes[i], p) for i, p in zip(batch, probs)]
                else:
                    results = self._generate([prefixes[i] for i in batch], batch_rows, shared, cache,
                                             sample, temperature, constrained)
                for i, r in zip(batch, results):
                    out[i] = r
                bar.update(len(batch))
        bar.close()
        return out

    def _direct(self, prefix: str, probs: list[float]) -> Judgement:
        grade = self.grades[max(range(len(probs)), key=probs.__getitem__)]
        text = f"{prefix} {grade}"
        parsed = parse(text.removeprefix(PREFILL), self.grades) if self.direct_prefill else None
        return Judgement(grade, probs, text, parsed=parsed)

    def _grade_probs(self, rows: list[list[int]], shared: int, cache: PrefixCache | None) -> list[list[float]]:
        """Grade distribution at the end of each row (rows end at 'Grade:'), over each grade's whole token sequence."""
        dev = self.hardware.device
        ids, mask = pack(rows, shared, self.tokenizer.pad_token_id, dev)
        pos = positions(mask)
        past = cache.for_batch(len(rows)) if cache else None
        multi = not self.grade_tokens.single_token
        out = self.model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=pos[:, shared:],
                         cache=past, use_cache=multi, logits_to_keep=1)
        logp = torch.log_softmax(out.logits[:, -1].float(), -1)
        scores = logp[:, self.grade_tokens.first_ids].clone()
        for g, seq in enumerate(self.grade_tokens.sequences):
            if len(seq) == 1:
                continue
            # The grade's later tokens, each conditioned on the ones before, on a copy of the row's cache.
            more = torch.tensor([seq[:-1]] * len(rows), device=dev)
            ext_mask = torch.cat([mask, torch.ones_like(more)], -1)
            ext_pos = pos[:, -1:] + 1 + torch.arange(len(seq) - 1, device=dev)
            o = self.model(input_ids=more, attention_mask=ext_mask, position_ids=ext_pos,
                           cache=copy.deepcopy(out.cache), logits_to_keep=len(seq) - 1)
            lp = torch.log_softmax(o.logits.float(), -1)
            scores[:, g] += lp[:, torch.arange(len(seq) - 1), torch.tensor(seq[1:])].sum(-1)
        return torch.softmax(scores, -1).tolist()

    def _generate(self, prefixes, rows, shared, cache, sample, temperature, constrained) -> list[Judgement]:
        s = self.settings
        ids, mask = pack(rows, shared, self.tokenizer.pad_token_id, self.hardware.device)
        structure = RationaleStructure(self.tokenizer, self.grade_tokens, ids.shape[1], s.max_new_tokens,
                                       first_line=2 if self.prefill_attributes else 0) if constrained else None
        gen = self.model.generate(
            input_ids=ids, attention_mask=mask, cache=cache.for_batch(len(rows)) if cache else None,
            max_new_tokens=structure.budget if structure else s.max_new_tokens, do_sample=sample,
            temperature=temperature if sample else None, top_p=None, top_k=None,
            logits_processor=[structure] if structure else None,
            output_logits=True, return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = gen.sequences[:, ids.shape[1]:]
        steps = [self._grade_step(b, new_tokens[b].tolist(), structure) for b in range(len(rows))]
        results = []
        for b, step in enumerate(steps):
            probs = None
            if step is not None and step < len(gen.logits) and self.grade_tokens.single_token:
                logits = gen.logits[step][b][self.grade_tokens.first_ids]
                probs = torch.softmax(logits.float(), -1).tolist()
            results.append((b, step, probs))
        rescore = [(b, step) for b, step, probs in results if step is not None and probs is None]
        if rescore:
            # A grade of several tokens: read the whole sequences with one forward pass over the rationale so far.
            more = self._grade_probs([rows[b] + new_tokens[b, :step].tolist() for b, step in rescore], shared, cache)
            found = dict(zip((b for b, _ in rescore), more))
            results = [(b, step, probs if probs is not None else found.get(b)) for b, step, probs in results]
        return [self._read(prefixes[b], new_tokens[b].tolist(), probs, step) for b, step, probs in results]

    def _grade_step(self, b: int, ids: list[int], structure: RationaleStructure | None) -> int | None:
        """The generated position whose logits carry row b's grade distribution (right after 'Grade:')."""
        if structure is not None:
            return structure.grade_step.get(b)
        for i in range(1, len(ids) + 1):
            if self.tokenizer.decode(ids[:i], skip_special_tokens=True).rstrip().endswith("Grade:"):
                return i
        return None

    def _read(self, prefix: str, ids: list[int], probs: list[float] | None, step: int | None) -> Judgement:
        text = prefix + self.tokenizer.decode(ids, skip_special_tokens=True)
        try:
            rationale = parse(text.removeprefix(PREFILL), self.grades)
        except RationaleParseError as e:
            return Judgement(None, None, text, str(e))
        if probs is None:
            return Judgement(None, None, text, "no grade step found after 'Grade:'")
        return Judgement(rationale.grade, probs, rationale.text(), parsed=rationale)


def contiguous_lm_head(model) -> None:
    """Make the LM head's input contiguous (once per model). It gets the last position of each row, a
    strided view; with frozen weights (a merged adapter) torch then multiplies on the CPU through a
    batched path that copies the whole vocabulary matrix per row: 10 s instead of 0.03 s per batch
    for a 1.5B teacher, measured in transformers 5.24 / torch 2.13."""
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_adore_contiguous", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._adore_contiguous = True
