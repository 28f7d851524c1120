"""Rule-aware prompts and the structured rationale the teacher answers with.

A rationale has four lines, always in this order:

    Query attributes: type=chair; quantity=6
    Item attributes: type=chair; brand=yaheetech; colour=grey; quantity=6
    Comparison: type match; quantity match
    Grade: exact

The assistant turn is pre-filled with "Query attributes:" so that even a
small model starts in the structure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import attributes as attr
from ..data.contract import Item
from ..errors import AdoreError

PREFILL = "Query attributes:"
GRADE_LINE = "Grade:"
_LINES = [("query_attributes", "Query attributes"), ("item_attributes", "Item attributes"),
          ("comparison", "Comparison"), ("grade", "Grade")]
_RX = re.compile(r"^\s*(Query attributes|Item attributes|Comparison|Grade)\s*:\s*(.*)$", re.I)


class RationaleParseError(AdoreError, ValueError):
    """A teacher answer that does not follow the rationale format."""


@dataclass
class Rationale:
    query_attributes: str
    item_attributes: str
    comparison: str
    grade: str

    def text(self) -> str:
        return "\n".join(f"{label}: {getattr(self, key)}" for key, label in _LINES)


def system_prompt(rules: str, grades: list[str]) -> str:
    return (
        f"{rules.strip()}\n\nYou judge search relevance. Grades, worst to best: {', '.join(grades)}.\n"
        "Answer in exactly four lines:\nQuery attributes: <key=value; ...>\nItem attributes: <key=value; ...>\n"
        "Comparison: <attribute match/mismatch; ...>\nGrade: <grade>"
    )


def user_prompt(query: str, item: Item, max_desc_chars: int = 200) -> str:
    parts = [f"Query: {query}", f"Item: {item.title}"]
    if item.attributes:
        parts.append("Item fields: " + "; ".join(f"{k}={v}" for k, v in item.attributes.items()))
    if item.description:
        parts.append(f"Details: {item.description[:max_desc_chars]}")
    return "\n".join(parts)


def rationale_prefix(query: str, item: Item, brands: attr.BrandLexicon | None, prefill_attributes: bool) -> str:
    """The start of the answer written for the model: the first header, or (with
    `prefill_attributes`) both attribute lines from the fast extractor, so that the
    model writes the comparison and the grade."""
    if not prefill_attributes:
        return PREFILL
    qa = attr.render(attr.extract(query, brands=brands))
    ia = attr.render(attr.extract(item.title, item.attributes, brands))
    return f"{PREFILL} {qa}\nItem attributes: {ia}\nComparison:"


def direct_prefix(query: str, item: Item, brands: attr.BrandLexicon | None) -> str:
    """The answer up to 'Grade:' with every line written by the fast extractor: direct judging
    reads the grade at the next step, with no generation."""
    r = rule_rationale(query, item, "", brands)
    return r.text().rstrip()


@dataclass
class Demonstration:
    """A judged pair shown to the teacher before the pair it judges: a human grade with a rule rationale."""

    query: str
    item: Item
    rationale: str


def chat_prompt(tokenizer, rules: str, grades: list[str], query: str, item: Item, prefix: str = PREFILL,
                demos: list[Demonstration] = ()) -> str:
    """The full prompt text up to and including the assistant pre-fill `prefix`; each demonstration
    is one earlier user turn (the pair) and assistant turn (its rationale)."""
    messages = [{"role": "system", "content": system_prompt(rules, grades)}]
    for d in demos:
        messages += [{"role": "user", "content": user_prompt(d.query, d.item)}, {"role": "assistant", "content": d.rationale}]
    messages.append({"role": "user", "content": user_prompt(query, item)})
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['content']}\n\n" for m in messages)
    return text + prefix


def parse(completion: str, grades: list[str]) -> Rationale:
    """Parse the text generated after PREFILL. Raises RationaleParseError; never guesses a grade."""
    text = PREFILL + completion
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _RX.match(line)
        if m:
            key = next(k for k, label in _LINES if label.lower() == m.group(1).lower())
            found.setdefault(key, m.group(2).strip())
    missing = [label for key, label in _LINES if key not in found]
    if missing:
        raise RationaleParseError(f"missing line(s): {', '.join(missing)}")
    words = found["grade"].lower().strip(" .").split()
    if not words or words[0].strip(".,;") not in grades:
        raise RationaleParseError(f"grade {found['grade']!r} is not one of {grades}")
    return Rationale(found["query_attributes"], found["item_attributes"], found["comparison"], words[0].strip(".,;"))


def consistent(r: Rationale, grades: list[str]) -> bool:
    """False when the comparison contradicts the grade under the basic rules: a product-type
    mismatch graded as the top grade, or everything matching graded as the lowest grade.
    A small teacher's rationale can agree with the human grade by chance; training on such
    a rationale would teach the wrong mapping from comparison to grade."""
    comp = r.comparison.lower()
    if r.grade == grades[-1] and "type mismatch" in comp:
        return False
    if r.grade == grades[0] and "mismatch" not in comp and "match" in comp:
        return False
    return "<" not in r.text() and "..." not in r.text()


def rule_rationale(query: str, item: Item, grade: str, brands: attr.BrandLexicon | None = None) -> Rationale:
    """A rationale written from the fast extractor for a known grade.

    Used where the teacher itself produced no rationale that agrees with the
    human (SFT seed) or with behaviour (KTO's corrected example).
    """
    qa = attr.extract(query, brands=brands)
    ia = attr.extract(item.title, item.attributes, brands)
    cmp = attr.compare(qa, ia)
    comparison = "; ".join(f"{k} {v}" for k, v in cmp.items()) or "no key attributes named in the query"
    return Rationale(attr.render(qa), attr.render(ia), comparison, grade)
