#!/usr/bin/env python3
"""A soak test of `philora serve` (issue 18): many concurrent streams for minutes over many
adapters, reporting errors, time to first token and inter-token latency, and whether memory
stayed flat.

  bench/soak.py make-model DIR [--tokenizer-dir D] [--adapters N] [--rank R]
      A random checkpoint of the Phi-3-mini shape in DIR/model (bf16 safetensors, made with
      torch on the GPU when there is one) with D's tokenizer.json and tokenizer_config.json,
      and N PEFT adapters DIR/adapters/a0 .. a{N-1} of rank R on qkv, o, gate_up and down of
      every layer. The adapters share one pair of files (symbolic links): the server still
      loads, uploads and evicts each by name as a separate adapter.
  bench/soak.py run --url URL --streams S --seconds T --adapters N [--pid PID]
      S client threads, each sending one streaming LoRAX request (/generate_stream) after
      another for T seconds, each request for a random one of a0 .. a{N-1} (or the base model
      when N is 0), a prompt of 64-256 random words and 64-192 new tokens (ignore_eos). Prints
      one JSON line: requests, errors (with the first few), tokens, TTFT and inter-token
      latency p50 / p99 (client side, from the arrival of each SSE event), the server's
      resident memory (VmRSS of PID) and the GPU's used memory, sampled every 10 s.

Only the standard library for `run`; torch and safetensors for `make-model`.
"""
import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

LAYERS, HIDDEN, INTER, HEADS, VOCAB = 32, 3072, 8192, 32, 32064


def make_model(args):
    import torch
    from safetensors.torch import save_file

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(1234)
    model_dir = os.path.join(args.dir, "model")
    os.makedirs(model_dir, exist_ok=True)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen, device=dev) * std).to(torch.bfloat16).cpu()

    tensors = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "lm_head.weight": rand(VOCAB, HIDDEN),
               "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        tensors[p + "self_attn.qkv_proj.weight"] = rand(3 * HIDDEN, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = rand(HIDDEN, HIDDEN)
        tensors[p + "mlp.gate_up_proj.weight"] = rand(2 * INTER, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = rand(HIDDEN, INTER)
    save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "hidden_act": "silu",
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "sliding_window": 2047, "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 32000, "pad_token_id": 32000, "torch_dtype": "bfloat16"}
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer_dir, name)
        if os.path.exists(src):
            with open(src, "rb") as a, open(os.path.join(model_dir, name), "wb") as b:
                b.write(a.read())

    shared = os.path.join(args.dir, "adapter_files")
    os.makedirs(shared, exist_ok=True)
    r = args.rank
    lora = {}
    dims = {"self_attn.qkv_proj": (HIDDEN, 3 * HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
            "mlp.gate_up_proj": (HIDDEN, 2 * INTER), "mlp.down_proj": (INTER, HIDDEN)}
    for i in range(LAYERS):
        for mod, (fan_in, fan_out) in dims.items():
            p = f"base_model.model.model.layers.{i}.{mod}."
            lora[p + "lora_A.weight"] = rand(r, fan_in, std=1.0 / fan_in ** 0.5)
            lora[p + "lora_B.weight"] = rand(fan_out, r, std=0.01)
    save_file(lora, os.path.join(shared, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(shared, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
                   "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
                   "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                   "base_model_name_or_path": "random-phi3-mini"}, f, indent=1)
    for k in range(args.adapters):
        d = os.path.join(args.dir, "adapters", f"a{k}")
        os.makedirs(d, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            link = os.path.join(d, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(shared, name), link)
    print(json.dumps({"model": model_dir, "adapters": args.adapters, "rank": r}))


WORDS = ("time water light house river stone night garden music paper window story river "
         "mountain engine signal market winter letter silver forest bridge morning question").split()


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def sample_memory(pid):
    rss = None
    if pid:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) // 1024
        except OSError:
            pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        gpu = int(out.splitlines()[0]) if out else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return rss, gpu


def run(args):
    url = urllib.parse.urlparse(args.url)
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    stats = {"requests": 0, "errors": 0, "tokens": 0, "ttft": [], "itl": [], "first_errors": []}

    def one(rng):
        body = {"inputs": " ".join(rng.choice(WORDS) for _ in range(rng.randint(64, 256))),
                "parameters": {"max_new_tokens": rng.randint(64, 192), "ignore_eos_token": True}}
        if args.adapters > 0:
            body["parameters"]["adapter_id"] = f"a{rng.randrange(args.adapters)}"
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        t0 = time.monotonic()
        tokens, last, ttft, gaps, error = 0, None, None, [], None
        try:
            conn.request("POST", "/generate_stream", json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            else:
                done = False
                while True:
                    line = resp.readline()
                    if not line:
                        break
                    if not line.startswith(b"data:"):
                        continue
                    now = time.monotonic()
                    event = json.loads(line[5:])
                    if "error" in event:
                        error = f"stream error: {event['error']}"
                        break
                    tokens += 1
                    if ttft is None:
                        ttft = now - t0
                    else:
                        gaps.append(now - last)
                    last = now
                    if event.get("generated_text") is not None:
                        done = True
                if error is None and not done:
                    error = f"stream ended without its last event after {tokens} tokens"
                elif error is None and tokens != body["parameters"]["max_new_tokens"]:
                    error = f"{tokens} tokens, {body['parameters']['max_new_tokens']} asked"
        except (OSError, http.client.HTTPException, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        with lock:
            stats["requests"] += 1
            stats["tokens"] += tokens
            if error:
                stats["errors"] += 1
                if len(stats["first_errors"]) < 5:
                    stats["first_errors"].append(error)
            else:
                stats["ttft"].append(ttft)
                stats["itl"].extend(gaps)

    def worker(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            one(rng)

    memory = [sample_memory(args.pid)]
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.streams)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(10)
        memory.append(sample_memory(args.pid))
    wall = time.monotonic() - start
    rss = [m[0] for m in memory if m[0] is not None]
    gpu = [m[1] for m in memory if m[1] is not None]
    ms = lambda v: None if v is None else round(v * 1e3, 2)
    print(json.dumps({
        "streams": args.streams, "seconds": round(wall, 1), "adapters": args.adapters,
        "requests": stats["requests"], "errors": stats["errors"], "first_errors": stats["first_errors"],
        "tokens": stats["tokens"], "tokens_per_second": round(stats["tokens"] / wall, 1),
        "ttft_ms_p50": ms(percentile(stats["ttft"], 0.5)), "ttft_ms_p99": ms(percentile(stats["ttft"], 0.99)),
        "itl_ms_p50": ms(percentile(stats["itl"], 0.5)), "itl_ms_p99": ms(percentile(stats["itl"], 0.99)),
        "itl_ms_mean": ms(statistics.fmean(stats["itl"])) if stats["itl"] else None,
        "server_rss_mib": rss, "gpu_used_mib": gpu}))
    return 0 if stats["errors"] == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("dir")
    m.add_argument("--tokenizer-dir", default="tests/tokenizer/out/phi3")
    m.add_argument("--adapters", type=int, default=100)
    m.add_argument("--rank", type=int, default=16)
    r = sub.add_parser("run")
    r.add_argument("--url", default="http://127.0.0.1:8080")
    r.add_argument("--streams", type=int, default=256)
    r.add_argument("--seconds", type=float, default=300)
    r.add_argument("--adapters", type=int, default=100)
    r.add_argument("--pid", type=int, default=0)
    args = ap.parse_args()
    return make_model(args) if args.cmd == "make-model" else run(args)


if __name__ == "__main__":
    sys.exit(main())
