"""Token ids as text, in the vocabulary of wattflow's dummy model bundle.

The bundle's word-level tokenizer (`wattflow.engines.bundle`) maps id i to the word "t<i>"
(ids 0-2 are "<unk>", "<s>", "</s>") and splits text on whitespace. Servers and clients that
see text instead of ids (the simulator's OpenAI endpoint, Parrot) use these two functions, so
text round-trips to exactly the ids vLLM's tokenizer would produce for the same bundle.
"""

from __future__ import annotations

from collections.abc import Iterable

from wattflow.engines.bundle import SPECIALS, token

_SPECIAL_IDS = {w: i for i, w in enumerate(SPECIALS)}
UNK = 0


def ids_to_text(ids: Iterable[int]) -> str:
    """'t5 t17 ...': the words of `ids`, separated by single spaces."""
    return " ".join(token(i) for i in ids)


def word_id(w: str, vocab_size: int) -> int:
    """The id of one word; a word outside the vocabulary is <unk> (id 0), as in the bundle."""
    special = _SPECIAL_IDS.get(w)
    if special is not None:
        return special
    if len(w) > 1 and w[0] == "t" and w[1:].isdigit() and (w[1] != "0" or len(w) == 2):
        i = int(w[1:])
        if len(SPECIALS) <= i < vocab_size:
            return i
    return UNK


def text_to_ids(text: str, vocab_size: int) -> list[int]:
    """Split on whitespace and look each word up (see `word_id`)."""
    return [word_id(w, vocab_size) for w in text.split()]
