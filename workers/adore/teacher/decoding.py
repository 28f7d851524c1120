"""Reading grades from the teacher: the grade names as token sequences, and the logits
processor that keeps a generated rationale in its four-line structure."""
from __future__ import annotations

import torch


class GradeTokens:
    """Each grade name as the token sequence the teacher writes after 'Grade:' (' exact', ' substitute').

    A grade is chosen by its first token, so first tokens must differ; its probability is read over
    its whole sequence: log p(g) = sum of the log-probabilities of its tokens, renormalised over the
    grades. When every grade is one token that is the softmax over those tokens' logits."""

    def __init__(self, tokenizer, grades: list[str]):
        self.grades = grades
        self.sequences = [tokenizer.encode(" " + g, add_special_tokens=False) for g in grades]
        firsts = [s[0] for s in self.sequences]
        if len(set(firsts)) != len(firsts):
            clash = [g for g, i in zip(grades, firsts) if firsts.count(i) > 1]
            raise ValueError(f"spec.grades: {clash} start with the same token for this teacher; rename them")
        self.first_ids = firsts
        self._rest = {s[0]: s[1:] for s in self.sequences}

    @property
    def single_token(self) -> bool:
        return all(len(s) == 1 for s in self.sequences)

    def rest(self, first_id: int) -> list[int]:
        """The tokens that complete the grade whose first token is first_id."""
        return list(self._rest[first_id])


LINE_CAP = 24


class RationaleStructure:
    """Logits processor that keeps generation in the four-line rationale structure.

    Per sequence: the first line (after the pre-fill) is free text until a newline or the
    per-line cap; then the processor forces "Item attributes:", a free line, "Comparison:",
    a free line, "Grade:", one grade (any grade's first token, then the rest of that grade's
    tokens), and end-of-sequence. `grade_step[b]` is the generated position of row b's
    grade step, where its grade distribution is read.
    """

    HEADERS = ["Item attributes:", "Comparison:", "Grade:"]

    def __init__(self, tokenizer, grades: GradeTokens, prompt_len: int, max_new_tokens: int, first_line: int = 0):
        self.tok = tokenizer
        self.grades = grades
        self.prompt_len = prompt_len
        self.newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
        self.line_breaks = sorted({self.newline, tokenizer.encode("\n\n", add_special_tokens=False)[-1]})
        self.headers = [tokenizer.encode(h, add_special_tokens=False) for h in self.HEADERS]
        self.first_line = first_line  # 2 when the attribute lines were pre-filled
        todo = self.headers[first_line:]
        longest_grade = max(map(len, grades.sequences))
        # A free line of the rationale rarely needs more than LINE_CAP tokens (a rule comparison names a few
        # attributes); one row that rambles on would keep its whole batch generating.
        self.line_cap = max(6, min(LINE_CAP, (max_new_tokens - sum(map(len, todo))) // (3 - first_line)))
        self.budget = (3 - first_line) * self.line_cap + sum(map(len, todo)) + longest_grade + 5
        self.eos = tokenizer.eos_token_id
        self.state: dict[int, dict] = {}
        self.grade_step: dict[int, int] = {}
        self._newline_ids: dict[int, bool] = {}

    def _newline_in(self, token_id: int) -> bool:
        if token_id not in self._newline_ids:
            self._newline_ids[token_id] = "\n" in self.tok.decode([token_id])
        return self._newline_ids[token_id]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        for b in range(input_ids.shape[0]):
            st = self.state.setdefault(b, {"line": self.first_line, "free": 0, "queue": [], "phase": "free"})
            if step > 0 and st["phase"] == "free":
                if self._newline_in(int(input_ids[b, -1])):
                    st["queue"] = list(self.headers[st["line"]])
                    st["line"] += 1
                    st["free"] = 0
                    st["phase"] = "header"
                else:
                    st["free"] += 1
            if st["phase"] == "grade-rest" and not st["queue"]:
                st["queue"] = self.grades.rest(int(input_ids[b, -1])) + [self.eos]
                st["phase"] = "forced-end"
            forced = None
            if st["phase"] == "free":
                scores[b, self.eos] = float("-inf")  # the answer ends after its grade, never inside a line
                if st["free"] == 0:
                    scores[b, self.line_breaks] = float("-inf")  # no empty lines
            if st["phase"] == "free" and st["free"] >= self.line_cap:
                forced = self.newline
            elif st["phase"] == "header":
                forced = st["queue"].pop(0)
                if not st["queue"]:
                    st["phase"] = "grade-next" if st["line"] == 3 else "free"
            elif st["phase"] == "grade-next":
                allowed = torch.full_like(scores[b], float("-inf"))
                allowed[self.grades.first_ids] = scores[b, self.grades.first_ids]
                scores[b] = allowed
                self.grade_step[b] = step
                st["phase"] = "grade-rest"
                continue
            elif st["phase"] == "forced-end":
                forced = st["queue"].pop(0) if st["queue"] else self.eos
            if forced is not None:
                scores[b] = torch.full_like(scores[b], float("-inf"))
                scores[b, forced] = 0.0
        return scores
