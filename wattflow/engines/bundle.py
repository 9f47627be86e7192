"""Offline model bundles: a config-only Llama with a word-level tokenizer.

vLLM with `--load-format dummy` needs only the architecture (config.json) to build and
randomly initialise a model of the exact shape under study, so compute, memory traffic and
KV-cache behaviour match the real model without downloading weights. The tokenizer maps id
i to the word "t<i>" so streamed text round-trips and detokenization costs what it would.

Ids 0, 1, 2 are the specials <unk>, <s>, </s>; every other id i is the word "t<i>".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from wattflow.files import default_mode
from wattflow.hardware import ModelShape

MARKER = "wattflow_dummy.json"  # present in a dummy bundle: serve with --load-format dummy
SPECIALS = ("<unk>", "<s>", "</s>")
_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16"}


def token(i: int) -> str:
    return SPECIALS[i] if i < len(SPECIALS) else f"t{i}"


def hf_config(shape: ModelShape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_context,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {  # Llama-3.1's
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": _TORCH_DTYPE[shape.dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
    }


def tokenizer_json(vocab_size: int) -> dict:
    """A `tokenizers` WordLevel tokenizer, written by hand (no `tokenizers` needed here)."""
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,  # decode joins words with single spaces: "t5 t17"
        "model": {
            "type": "WordLevel",
            "vocab": {token(i): i for i in range(vocab_size)},
            "unk_token": "<unk>",
        },
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1 if len(json.dumps(obj)) < 10_000 else None) + "\n")


def write_dummy_model(shape: ModelShape, out_dir: str | Path) -> Path:
    """Write the bundle into `out_dir` (atomically: a complete bundle or none) and return it.
    An existing bundle with the same config is reused."""
    out = Path(out_dir)
    config = hf_config(shape)
    if (out / MARKER).exists() and json.loads((out / "config.json").read_text()) == config:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "tokenizer.json", tokenizer_json(shape.vocab_size))
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": False,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": shape.max_context,
            },
        )
        _write_json(
            tmp / "special_tokens_map.json",
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        )
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False},
        )
        _write_json(
            tmp / MARKER,
            {
                "shape": shape.name,
                "dtype": shape.dtype,
                "note": "config only: serve with --load-format dummy",
            },
        )
        tmp.chmod(default_mode(0o777))  # mkdtemp makes 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            _rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _rmtree(tmp)
        raise
    return out


def is_dummy(model_dir: str | Path) -> bool:
    return (Path(model_dir) / MARKER).exists()


def model_dir(
    shape: ModelShape, bundles_dir: str | Path, real_dir: str | Path | None = None
) -> Path:
    """A real model directory (with config.json) is passed through untouched; otherwise a
    dummy bundle for `shape` is written under `bundles_dir`."""
    if real_dir:
        p = Path(real_dir)
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model directory {p} has no config.json")
        return p
    tag = f"{shape.name}-{shape.layers}l-{shape.hidden_size}h-{shape.vocab_size}v-{shape.dtype}"
    return write_dummy_model(shape, Path(bundles_dir) / tag.replace("/", "_"))


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
