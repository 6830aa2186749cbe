"""Prompt templates of the SSU paper's generation tasks (Yamaguchi et al., 2025, arXiv:2512.04844).

MT: an instruction written in the prompt's source language ("Fassara Turanci zuwa Hausa:"
for English -> Hausa), a newline, the source sentence and " =": the model continues
with the translation. The paper evaluates 3-shot for MT and 0-shot for summarization,
with a 128-token budget and a newline stop. SUM: "<instruction> <article> <anchor>"
with the instruction and anchor in the summary's language. Languages outside the
paper's set get an English instruction of the same shape.
"""

from __future__ import annotations

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


def mt_prompt(src: str, tgt: str, text: str, shots: list[tuple[str, str]] = ()) -> str:
    """Instruction, then `shots` solved examples ('source = target'), then 'source ='."""
    examples = "".join(f"{s} = {t}\n\n" for s, t in shots)
    return f"{mt_instruction(src, tgt)}{examples}{text} ="


def sum_prompt(lang: str, text: str, shots: list[tuple[str, str]] = ()) -> str:
    instruction, anchor = SUM_TEMPLATES.get(lang, (f"Summarize the following text in {name_of(lang)}:", "Summary:"))
    examples = "".join(f"{instruction} {t} {anchor} {s}\n\n" for t, s in shots)
    return f"{examples}{instruction} {text} {anchor}"
