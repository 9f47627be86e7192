# ruff: noqa: SIM115 - a throwaway probe script, kept as evidence of what was checked
"""One-off probe of the GPU host before the real grid: vLLM flags, response shapes, NVML.

Run there after the offline install (see README.md in this folder). Prints what the
client, server launcher and NVML sampler depend on; writes probe.json under $OUT.

    python validation/h100/probe.py

The server gets its API key as wattflow's launcher gives it (the VLLM_API_KEY environment
variable, not `--api-key`, so `ps` does not show it).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

OUT = os.environ.get("OUT", "/tmp/out")
MODEL = "/tmp/model"
res: dict = {}


def bundle() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    os.makedirs(MODEL, exist_ok=True)
    vocab = {f"t{i}": i for i in range(128256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(f"{MODEL}/tokenizer.json")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    json.dump(cfg, open(f"{MODEL}/config.json", "w"))
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "t0",
            "bos_token": "t1",
            "eos_token": "t2",
        },
        open(f"{MODEL}/tokenizer_config.json", "w"),
    )


def nvml() -> None:
    import pynvml as n

    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    r = {
        "name": n.nvmlDeviceGetName(h),
        "driver": n.nvmlSystemGetDriverVersion(),
        "energy_mj": n.nvmlDeviceGetTotalEnergyConsumption(h),
        "power_mw": n.nvmlDeviceGetPowerUsage(h),
        "limit_mw": n.nvmlDeviceGetPowerManagementLimit(h),
        "enforced_mw": n.nvmlDeviceGetEnforcedPowerLimit(h),
        "constraints_mw": n.nvmlDeviceGetPowerManagementLimitConstraints(h),
        "sm_clock": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
        "max_sm_clock": n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM),
        "mem_clock": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
    }
    fields = [f for f in dir(n) if f.startswith("NVML_FI_DEV_POWER") or "MEMORY_POWER" in f]
    r["power_fields"] = {}
    for f in fields:
        try:
            v = n.nvmlDeviceGetFieldValues(h, [getattr(n, f)])[0]
            r["power_fields"][f] = [
                v.nvmlReturn,
                v.valueType,
                v.value.uiVal,
                v.value.dVal,
                v.value.ullVal,
            ]
        except Exception as e:  # noqa: BLE001
            r["power_fields"][f] = repr(e)
    for fn in (
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
    ):
        try:
            r[fn] = getattr(n, fn)(h)
        except Exception as e:  # noqa: BLE001
            r[fn] = repr(e)
    t, e0 = time.monotonic(), n.nvmlDeviceGetTotalEnergyConsumption(h)
    changes, last = [], e0
    while time.monotonic() - t < 1.0:
        e = n.nvmlDeviceGetTotalEnergyConsumption(h)
        if e != last:
            changes.append(round(time.monotonic() - t, 4))
            last = e
    r["energy_update_times_1s"] = changes
    res["nvml"] = r


def post(path, body, key):
    req = urllib.request.Request(
        f"http://127.0.0.1:8011{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    return urllib.request.urlopen(req, timeout=120)


def server() -> None:
    key = "probe-key"
    args = [
        "vllm",
        "serve",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        "8011",
        "--served-model-name",
        "wattflow",
        "--load-format",
        "dummy",
        "--max-num-seqs",
        "256",
        "--max-num-batched-tokens",
        "8192",
        "--gpu-memory-utilization",
        "0.85",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--scheduling-policy",
        "priority",
        "--seed",
        "0",
    ]
    res["args"] = args
    log = open(f"{OUT}/probe-server.log", "w")
    t0 = time.monotonic()
    env = {**os.environ, "VLLM_API_KEY": key}  # as wattflow.engines.backends.vllm passes it
    p = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    ok = False
    while time.monotonic() - t0 < 420 and p.poll() is None:
        try:
            urllib.request.urlopen("http://127.0.0.1:8011/health", timeout=2)
            ok = True
            break
        except Exception:  # noqa: BLE001
            time.sleep(2)
    res["startup_s"] = round(time.monotonic() - t0, 1)
    res["healthy"] = ok
    if ok:
        res["version"] = urllib.request.urlopen("http://127.0.0.1:8011/version").read().decode()
        body = {
            "model": "wattflow",
            "prompt": list(range(100, 1124)),
            "max_tokens": 16,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "priority": 0,
            "stream_options": {"include_usage": True},
        }
        for attempt in range(2):  # second time: prefix cache hit
            t = time.monotonic()
            lines = []
            with post("/v1/completions", body, key) as r:
                for raw in r:
                    s = raw.decode().strip()
                    if s:
                        lines.append((round(time.monotonic() - t, 4), s[:400]))
            res[f"stream{attempt}"] = lines[:3] + lines[-3:]
            res[f"stream{attempt}_n"] = len(lines)
        try:
            res["bad_key"] = post("/v1/completions", body, "wrong").status
        except Exception as e:  # noqa: BLE001
            res["bad_key"] = repr(e)[:200]
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
    res["exit"] = p.returncode
    res["stop_s"] = round(time.monotonic() - t0, 1)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        description="Probe the GPU host: NVML fields, a dummy bundle in "
        f"{MODEL}, and a vLLM server on port 8011; writes probe.json under $OUT ({OUT})."
    ).parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    for step in (nvml, bundle, server):
        try:
            step()
        except Exception as e:  # noqa: BLE001
            res[f"{step.__name__}_error"] = repr(e)
        json.dump(res, open(f"{OUT}/probe.json", "w"), indent=1, default=str)
    print(json.dumps(res, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    main()
    sys.exit(0)
