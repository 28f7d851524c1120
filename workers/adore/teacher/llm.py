"""The teacher LLM: loading with its adapter chain, judging pairs, LoRA SFT."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .. import models
from ..data.contract import Item
from .prompt import PREFILL, RationaleParseError, chat_prompt, parse, rationale_prefix

log = logging.getLogger(__name__)


@dataclass
class Judgement:
    grade: str | None            # None when the rationale did not parse
    probs: list[float] | None    # over the grade scheme, lowest grade first
    rationale: str               # the whole rationale, pre-fill included (canonical form when parsed)
    error: str | None = None


@dataclass
class Teacher:
    model: object
    tokenizer: object
    rules: str
    grades: list[str]
    grade_token_ids: list[int] = field(default_factory=list)
    brands: object = None               # attributes.BrandLexicon for the attribute pre-fill
    prefill_attributes: bool = False

    @classmethod
    def load(cls, name: str, rules: str, grades: list[str], adapters: list[str | Path] = (), base_dir: Path | None = None,
             brands=None, prefill_attributes: bool = False) -> "Teacher":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(name, base_dir)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        for adapter in adapters:
            from peft import PeftModel

            # Merge each stage's adapter so the next stage trains a fresh one on top.
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.eval()
        teacher = cls(model, tok, rules, grades, brands=brands, prefill_attributes=prefill_attributes)
        teacher.grade_token_ids = teacher._grade_tokens()
        return teacher

    def _grade_tokens(self) -> list[int]:
        ids = [self.tokenizer.encode(" " + g, add_special_tokens=False)[0] for g in self.grades]
        if len(set(ids)) != len(ids):
            clash = [g for g, i in zip(self.grades, ids) if ids.count(i) > 1]
            raise ValueError(f"spec.grades: {clash} start with the same token for this teacher; rename them")
        return ids

    def prefix(self, query: str, item: Item) -> str:
        return rationale_prefix(query, item, self.brands, self.prefill_attributes)

    def prompt(self, query: str, item: Item, prefix: str | None = None) -> str:
        prefix = self.prefix(query, item) if prefix is None else prefix
        return chat_prompt(self.tokenizer, self.rules, self.grades, query, item, prefix)

    def completion(self, query: str, item: Item, rationale: str) -> str:
        """The part of a whole rationale that the model writes after this teacher's prompt."""
        prefix = self.prefix(query, item)
        if not rationale.startswith(prefix):
            raise ValueError(f"rationale does not start with the teacher's pre-fill {prefix!r}: {rationale[:120]!r}")
        return rationale[len(prefix):]

    @torch.no_grad()
    def judge(self, pairs: list[tuple[str, Item]], max_new_tokens: int = 48, batch_size: int = 8,
              sample: bool = False, temperature: float = 0.8, seed: int = 0, progress: str | None = None,
              max_prompt_tokens: int = 384, constrained: bool = True) -> list[Judgement]:
        """Generate a rationale per pair and read the grade distribution at the step after 'Grade:'.

        With `constrained` (the default) a logits processor keeps the answer in its four-line
        structure: it writes the line headers itself, caps each free line, and at the grade step
        allows only grade tokens. The probabilities come from the raw logits of that step.
        """
        out: list[Judgement] = []
        torch.manual_seed(seed)
        bar = tqdm(total=len(pairs), desc=progress, unit="pair", disable=progress is None, mininterval=2)
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            prefixes = [self.prefix(q, item) for q, item in batch]
            texts = [self.prompt(q, item, pre) for (q, item), pre in zip(batch, prefixes)]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=max_prompt_tokens, add_special_tokens=False)
            structure = RationaleStructure(self.tokenizer, self.grade_token_ids, enc.input_ids.shape[1],
                                           max_new_tokens, first_line=2 if self.prefill_attributes else 0) \
                if constrained else None
            gen = self.model.generate(
                **enc, max_new_tokens=structure.budget if structure else max_new_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=None, top_k=None,
                logits_processor=[structure] if structure else None,
                output_logits=True, return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = gen.sequences[:, enc.input_ids.shape[1]:]
            for b in range(len(batch)):
                out.append(self._read(prefixes[b], new_tokens[b], [s[b] for s in gen.logits]))
            bar.update(len(batch))
        bar.close()
        return out

    def _read(self, prefix: str, tokens: torch.Tensor, step_logits: list[torch.Tensor]) -> Judgement:
        ids = tokens.tolist()
        text = prefix + self.tokenizer.decode(ids, skip_special_tokens=True)
        try:
            rationale = parse(text.removeprefix(PREFILL), self.grades)
        except RationaleParseError as e:
            return Judgement(None, None, text, str(e))
        # The generation step right after "Grade:" carries the grade distribution.
        for i in range(1, len(ids) + 1):
            if self.tokenizer.decode(ids[:i], skip_special_tokens=True).rstrip().endswith("Grade:"):
                if i < len(step_logits):
                    logits = step_logits[i][self.grade_token_ids]
                    probs = torch.softmax(logits.float(), -1).tolist()
                    return Judgement(rationale.grade, probs, rationale.text())
                break
        return Judgement(None, None, text, "no grade step found after 'Grade:'")


class RationaleStructure:
    """Logits processor that keeps generation in the four-line rationale structure.

    Per sequence: the first line (after the pre-fill) is free text until a newline or the
    per-line cap; then the processor forces "Item attributes:", a free line, "Comparison:",
    a free line, "Grade:", exactly one grade token, and end-of-sequence.
    """

    HEADERS = ["Item attributes:", "Comparison:", "Grade:"]

    def __init__(self, tokenizer, grade_ids: list[int], prompt_len: int, max_new_tokens: int, first_line: int = 0):
        self.tok = tokenizer
        self.grade_ids = grade_ids
        self.prompt_len = prompt_len
        self.newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
        self.line_breaks = sorted({self.newline, tokenizer.encode("\n\n", add_special_tokens=False)[-1]})
        self.headers = [tokenizer.encode(h, add_special_tokens=False) for h in self.HEADERS]
        self.first_line = first_line  # 2 when the attribute lines were pre-filled
        todo = self.headers[first_line:]
        self.line_cap = max(6, (max_new_tokens - sum(map(len, todo))) // (3 - first_line))
        self.budget = (3 - first_line) * self.line_cap + sum(map(len, todo)) + 6
        self.eos = tokenizer.eos_token_id
        self.state: dict[int, dict] = {}

    def _newline_in(self, token_id: int) -> bool:
        return "\n" in self.tok.decode([token_id])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(input_ids.shape[0]):
            st = self.state.setdefault(b, {"line": self.first_line, "free": 0, "queue": [], "phase": "free"})
            if input_ids.shape[1] > self.prompt_len and st["phase"] == "free":
                last = int(input_ids[b, -1])
                if self._newline_in(last):
                    st["queue"] = list(self.headers[st["line"]])
                    st["line"] += 1
                    st["free"] = 0
                    st["phase"] = "header"
                else:
                    st["free"] += 1
            forced = None
            if st["phase"] == "free" and st["free"] == 0:
                scores[b, self.line_breaks] = float("-inf")  # no empty lines
            if st["phase"] == "free" and st["free"] >= self.line_cap:
                forced = self.newline
            elif st["phase"] == "header":
                forced = st["queue"].pop(0)
                if not st["queue"]:
                    st["phase"] = "grade-next" if st["line"] == 3 else "free"
            elif st["phase"] == "grade-next":
                allowed = torch.full_like(scores[b], float("-inf"))
                allowed[self.grade_ids] = scores[b, self.grade_ids]
                scores[b] = allowed
                st["phase"] = "end"
                continue
            elif st["phase"] == "end":
                forced = self.eos
                st["phase"] = "done"
            elif st["phase"] == "done":
                forced = self.eos
            if forced is not None:
                scores[b] = torch.full_like(scores[b], float("-inf"))
                scores[b, forced] = 0.0
        return scores


def lora_config(rank: int, alpha: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def sft_lora(teacher: Teacher, examples: list[tuple[str, str]], out_dir: Path, *, epochs: int, lr: float,
             batch_size: int, rank: int, alpha: int, seed: int = 0) -> dict:
    """Supervised LoRA fine-tuning on (prompt, completion); loss on the completion tokens only."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = teacher.tokenizer
    model = get_peft_model(teacher.model, lora_config(rank, alpha))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    eos = tok.eos_token or ""
    losses = []
    steps = epochs * math.ceil(len(examples) / batch_size)
    bar = tqdm(total=steps, desc="sft", unit="step", mininterval=2)
    t0 = time.time()
    for _ in range(epochs):
        order = examples[:]
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, labels = [], []
            for prompt, completion in batch:
                p = tok.encode(prompt, add_special_tokens=False)
                c = tok.encode(completion + eos, add_special_tokens=False)
                ids.append(p + c)
                labels.append([-100] * len(p) + c)
            width = max(map(len, ids))
            pad = tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
            attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
            lab = torch.tensor([[-100] * (width - len(x)) + x for x in labels])
            loss = model(input_ids=input_ids, attention_mask=attn, labels=lab).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.save_pretrained(out_dir)
    model.eval()
    teacher.model = model.merge_and_unload()
    return {"steps": len(losses), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "seconds": round(time.time() - t0, 1)}
