"""Prompt templates of the SSU paper's generation tasks (Yamaguchi et al., 2025, arXiv:2512.04844).

MT: an instruction written in the prompt's source language ("Fassara Turanci zuwa Hausa:"
for English -> Hausa), a newline, the source sentence and " =": the model continues
with the translation (the reference code's `mt.py` LightEval tasks). The paper evaluates
3-shot for MT and 0-shot for summarization, with a 128-token budget and a newline stop.
SUM: "<instruction> <article> <anchor>" with the instruction and anchor in the summary's
language. Languages outside the paper's set get an English instruction of the same shape.
Shots are rendered inline in one prompt (`render_inline`) or as chat turns (`render_turns`).
"""

from __future__ import annotations

from typing import Sequence

from adaptkit.evals.langcodes import name_of

# (source, target) -> instruction; from the paper's evaluation set-up (en <-> am, ha, ig, ky, ne)
MT_INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("am", "en"): "አማርኛን ወደ እንግሊዝኛ ተርጉም:\n",
    ("ne", "en"): "नेपालीलाई अङ्ग्रेजीमा अनुवाद गर्नुहोस्:\n",
    ("ha", "en"): "Fassara Hausa zuwa Turanci:\n",
    ("ig", "en"): "Sụgharịa Igbo gaa na Bekee:\n",
    ("ky", "en"): "Кыргызчадан англисчеге которуу:\n",
    ("en", "am"): "እንግሊዝኛን ወደ አማርኛ ተርጉም:\n",
    ("en", "ne"): "अङ्ग्रेजीलाई नेपालीमा अनुवाद गर्नुहोस्:\n",
    ("en", "ha"): "Fassara Turanci zuwa Hausa:\n",
    ("en", "ig"): "Sụgharịa Bekee gaa n'Igbo:\n",
    ("en", "ky"): "Англисчеден кыргызчага которуу:\n",
}

# language -> (instruction, anchor)
SUM_TEMPLATES: dict[str, tuple[str, str]] = {
    "en": ("Summarize the following text in English:", "Summary:"),
    "am": ("የታችኛው ጽሁፍን በአማርኛ አጭር በማድረግ አሳትረኝ።:", "አጭር መግለጫ:"),
    "ne": ("तलको पाठलाई नेपालीमा संक्षेपमा लेख्नुहोस्:", "सारांश:"),
    "ha": ("Taƙaita rubutu mai zuwa cikin Hausa:", "Taƙaitawa:"),
    "ig": ("Chịkọta edemede a n'Igbo:", "Nchịkọta:"),
    "ky": ("Төмөнкү текстти кыргызча кыскача жазыңыз:", "Кыскача:"),
}


def mt_instruction(src: str, tgt: str) -> str:
    return MT_INSTRUCTIONS.get((src, tgt), f"Translate {name_of(src)} into {name_of(tgt)}:\n")


def mt_query(text: str) -> str:
    """A source sentence as the model sees it: 'source =' (the reference code's LightEval prompt)."""
    return f"{text} ="


def sum_query(lang: str, text: str) -> str:
    """'<instruction> <article> <anchor>' in the summary's language."""
    instruction, anchor = SUM_TEMPLATES.get(lang, (f"Summarize the following text in {name_of(lang)}:", "Summary:"))
    return f"{instruction} {text} {anchor}"


def render_inline(instruction: str, shots: Sequence[tuple[str, str]], query: str) -> str:
    """One prompt: the instruction, each solved shot ('query reference' and a blank line), then the query."""
    return instruction + "".join(f"{q} {r}\n\n" for q, r in shots) + query


def render_turns(instruction: str, shots: Sequence[tuple[str, str]], query: str) -> list[dict[str, str]]:
    """A conversation: per shot a user turn (its query) and an assistant turn (its reference), then the
    query as the last user turn; the instruction begins the first user turn. This is how LightEval
    renders few-shot examples under a chat template (PromptManager, `--use-chat-template`), which the
    SSU paper's evaluation used; flattened (user, space, assistant, blank line) it is `render_inline`."""
    messages: list[dict[str, str]] = []
    for q, r in shots:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": query})
    messages[0]["content"] = instruction + messages[0]["content"]
    return messages
