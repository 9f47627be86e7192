"""Length distributions, named after the published statistics they come from.

A workflow spec refers to one of these by name (`{dist: empirical, ref: govreport_document}`)
or declares its own (`{dist: lognormal, median: 800, sigma: 0.5, min: 100, max: 4000}`).

Papers report means (sometimes min/max), not whole distributions, so each named
distribution is a lognormal whose *mean* is the published one: median = mean /
exp(sigma^2 / 2). The spread (sigma) is an assumption unless stated otherwise, and so is
the words-to-tokens factor: TOKENS_PER_WORD = 1.3 (a rule of thumb for English with BPE
tokenizers, ~0.75 words per token; not from any of the papers below).

Sources, and how far each number was checked (against the public text of the paper or of
the data set's card), are written next to the number. "verified" means the number was
found in the paper or its data-set card; "approximate, unverified" means it is quoted from
the paper as remembered and was not found in a checkable copy.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

TOKENS_PER_WORD = 1.3  # assumption (rule of thumb, ~0.75 words per BPE token), see above


@dataclass(frozen=True, slots=True)
class Dist:
    """A length (or time) distribution: `fixed`, `uniform` or `lognormal`, clipped to
    [min, max]. Lognormal draws outside the bounds are redrawn (a truncated lognormal)."""

    kind: str
    median: float = 0.0  # fixed: the value; lognormal: the median
    sigma: float = 0.0  # lognormal: std-dev of log(x)
    low: float = 0.0  # uniform
    high: float = 0.0  # uniform
    min: float | None = None
    max: float | None = None
    integer: bool = True
    source: str = ""

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.median
        if self.kind == "uniform":
            if self.integer:
                return rng.randint(int(self.low), int(self.high))
            return rng.uniform(self.low, self.high)
        lo = -math.inf if self.min is None else self.min
        hi = math.inf if self.max is None else self.max
        for _ in range(64):
            x = self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))
            if lo <= x <= hi:
                break
        x = min(max(x, lo), hi)
        return round(x) if self.integer else x

    def upper(self) -> float:
        """An upper bound (the max; for an unbounded lognormal its 99.997th percentile)."""
        if self.kind == "fixed":
            return self.median
        if self.kind == "uniform":
            return self.high
        if self.max is not None:
            return self.max
        return self.median * math.exp(4.0 * self.sigma)

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "lognormal":
            return self.median * math.exp(self.sigma**2 / 2)
        return self.median


def from_mean(mean: float, sigma: float, lo: float, hi: float, source: str) -> Dist:
    """A lognormal with the given mean (median = mean / exp(sigma^2/2))."""
    return Dist(
        "lognormal",
        median=mean / math.exp(sigma**2 / 2),
        sigma=sigma,
        min=lo,
        max=hi,
        source=source,
    )


def _words(n: float) -> float:
    return n * TOKENS_PER_WORD


# Lines of code to tokens: ~10 tokens per line of Python is our estimate (not from the
# papers: typical of GPT/Llama tokenizers on PEP8 code).
TOKENS_PER_CODE_LINE = 10

EMPIRICAL: dict[str, Dist] = {
    # --- summarization: long documents ------------------------------------------------
    # GovReport (Huang et al., "Efficient Attentions for Long Document Summarization",
    # NAACL 2021): documents average 9.4k words (9,409) and summaries 553 words; verified
    # against the paper's text as quoted on the data set's card (kmfoda/gov_report):
    # "significantly longer documents (9.4k words) and summaries (553 words)".
    # sigma = 0.5 and the bounds are our assumptions.
    "govreport_document": from_mean(
        _words(9409), 0.5, 1_000, 60_000, "GovReport mean 9,409 words (Huang et al. 2021)"
    ),
    "govreport_summary": from_mean(
        _words(553), 0.4, 100, 3_000, "GovReport summary mean 553 words (Huang et al. 2021)"
    ),
    # arXiv summarization data set (Cohan et al., "A Discourse-Aware Attention Model for
    # Abstractive Summarization of Long Documents", NAACL 2018, Table 1): articles average
    # 4,938 words, abstracts 220 words. Approximate, unverified (the table was not found in
    # a checkable copy). sigma and bounds are our assumptions.
    "arxiv_article": from_mean(
        _words(4938), 0.6, 500, 40_000, "arXiv mean 4,938 words (Cohan et al. 2018; unverified)"
    ),
    "arxiv_abstract": from_mean(
        _words(220),
        0.35,
        50,
        1_000,
        "arXiv abstract mean 220 words (Cohan et al. 2018; unverified)",
    ),
    # PubMed, same paper and table: articles 3,016 words, abstracts 203 words.
    # Approximate, unverified.
    "pubmed_article": from_mean(
        _words(3016), 0.6, 300, 30_000, "PubMed mean 3,016 words (Cohan et al. 2018; unverified)"
    ),
    "pubmed_abstract": from_mean(
        _words(203),
        0.35,
        50,
        1_000,
        "PubMed abstract mean 203 words (Cohan et al. 2018; unverified)",
    ),
    # --- chat ---------------------------------------------------------------------------
    # ShareGPT as used in the vLLM paper (Kwon et al., "Efficient Memory Management for
    # Large Language Model Serving with PagedAttention", SOSP 2023, Fig. 11): mean input
    # 161.31 tokens, mean output 337.99 tokens. The text's statement "ShareGPT has 8.4x
    # longer input prompts and 5.8x longer outputs on average than Alpaca" was verified;
    # the absolute means (Fig. 11, and Alpaca's 19.31 / 58.45, consistent with those
    # ratios) are approximate, unverified. sigma = 1.0 reflects the paper's "higher
    # variance" (our assumption); bounds: 1 token up to the 2,048-token context used there.
    "sharegpt_input": from_mean(
        161.31, 1.0, 1, 2_048, "ShareGPT mean input 161.31 tokens (vLLM paper; approximate)"
    ),
    "sharegpt_output": from_mean(
        337.99, 1.0, 1, 2_048, "ShareGPT mean output 337.99 tokens (vLLM paper; approximate)"
    ),
    # --- coding agents ------------------------------------------------------------------
    # ChatDev (Qian et al., "Communicative Agents for Software Development", ACL 2024,
    # Table 1): generated software has 39-359 lines of code, 131.61 on average; verified
    # (as quoted from Table 1). Tokens per line (10) is our estimate, so the whole program
    # is ~1,316 tokens with bounds 390-3,590.
    "chatdev_program": from_mean(
        131.61 * TOKENS_PER_CODE_LINE,
        0.5,
        39 * TOKENS_PER_CODE_LINE,
        359 * TOKENS_PER_CODE_LINE,
        "ChatDev mean 131.61 lines (39-359) of code (Qian et al. 2024) x 10 tokens/line (est.)",
    ),
    # One coder's share when a ChatDev-sized program is split across 4 parallel coders:
    # our estimate derived from the line above (not a published per-role number).
    "chatdev_code_per_coder": from_mean(
        131.61 * TOKENS_PER_CODE_LINE / 4,
        0.5,
        39 * TOKENS_PER_CODE_LINE / 4,
        359 * TOKENS_PER_CODE_LINE / 4,
        "ChatDev program / 4 coders (our estimate)",
    ),
}

# MetaGPT (Hong et al., "MetaGPT: Meta Programming for a Multi-Agent Collaborative
# Framework", ICLR 2024): 124.3 tokens consumed per line of generated code ("productivity"
# on SoftwareDev). Verified only through secondary sources quoting "124 tokens/line".
# Not a distribution: the ratio of all prompt+output tokens of a run to its lines of code,
# useful to sanity-check an agentic spec's total token count.
METAGPT_TOKENS_PER_CODE_LINE = 124.3


def empirical(name: str) -> Dist:
    try:
        return EMPIRICAL[name]
    except KeyError:
        raise KeyError(
            f"unknown empirical distribution {name!r}; known: {sorted(EMPIRICAL)}"
        ) from None
