#!/usr/bin/env python3
"""Medusa heads for the embedded model (models/philora-tiny), trained on the GPU machine.

Medusa (Cai et al., 2024) puts K small heads on the model's final hidden state h_t (after the
final norm); head i guesses the token of position t + 2 + i, so one forward step can propose
K tokens beyond the one the model itself predicts, and the next step verifies them. The heads
are what philora's `--speculate medusa` drafts with.

The heads written here are LoRAX's "MedusaV2" layout, which philora loads
(src/model/medusa.h): one residual block per head and the model's own lm_head,

    x_i = h_t + SiLU(W_i h_t + b_i);   logits_i = lm_head(x_i)

in OUT/medusa/{config.json, medusa_lm_head.safetensors} ("i.0.linear.weight" (H, H) and
"i.0.linear.bias" (H), bfloat16), plus OUT/medusa/training.json (what this run did). Adapters named
by --adapters (default kjv) get heads of their own, trained on the adapter's model (base + LoRA)
and its domain's text, in OUT/adapters/NAME/{config.json, medusa_lm_head.safetensors}, where
philora (and LoRAX) look for an adapter's heads.

Training is self-distillation with the base model frozen: head i at position t is trained
towards the model's own next-token distribution at position t + 1 + i (the soft targets the
model gives there), which is what greedy verification accepts. W_i and b_i start at zero, so
every head starts as the model's next-token prediction (Medusa's initialisation). The windows
are of two kinds (version 2): the base + chat training text, and (--gen-fraction of each step's
tokens) the model's own greedy continuations of training-text prompts, generated first within
--gen-seconds (Medusa-2's self-distillation data: in decoding the heads read hidden states of
the model's own text, which a small model's text is unlike; the loss covers the continuation's
positions only).

Reported on held-out text before and after training, two ways: teacher-forced on the held-out
text itself, and on the model's greedy continuations of held-out prompts (what greedy decoding
sees; positions of the continuation): per head the share of positions where its argmax equals
the model's argmax at t + 1 + i, and the mean number of drafted tokens a chain of the first k
heads would have accepted (k = 1..K).

Usage (GPU machine; see tools/README.md):
    python3 tools/train_medusa.py --models models --corpus .corpus --out OUT
    python3 tools/train_medusa.py --self-test      # the pure-Python parts, no torch needed
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny as tt  # noqa: E402  (render_document, parse_doc, the model constants)

T0 = time.time()
SCRIPT_VERSION = 2
DEFAULT_SEED = 20251207
DEFAULTS = dict(heads=4, seconds=75.0, adapter_seconds=30.0, batch=16, seq_len=1024, lr=3e-3, warmup=30, max_chars=12_000_000,
                chat_fraction=0.3, eval_windows=16, gen_fraction=0.5, gen_seconds=30.0, gen_prompt=128, gen_new=384,
                gen_batch=256)
SMOKE = dict(seconds=5.0, adapter_seconds=3.0, batch=2, seq_len=256, max_chars=300_000, warmup=2, eval_windows=2,
             gen_seconds=2.0, gen_prompt=16, gen_new=32, gen_batch=4)
TRAIN_DOMAINS = ("base", "chat")


def log(msg: str) -> None:
    print(f"[medusa +{time.time() - T0:6.1f}s] {msg}", flush=True)


def tensor_names(k: int) -> dict:
    """Every tensor of medusa_lm_head.safetensors for k heads of one block (MedusaV2): name -> shape."""
    h = tt.MODEL["hidden_size"]
    out = {}
    for i in range(k):
        out[f"{i}.0.linear.weight"] = [h, h]
        out[f"{i}.0.linear.bias"] = [h]
    return out


def medusa_config(k: int) -> dict:
    return {"medusa_num_heads": k, "medusa_num_layers": 1, "hidden_size": tt.MODEL["hidden_size"],
            "vocab_size": tt.MODEL["vocab_size"], "base_model_name_or_path": tt.MODEL_DIRNAME,
            "output": "the base model's lm_head (LoRAX MedusaV2 layout: no per-head output matrix)"}


def chain_accepts(matches) -> list:
    """matches[p][i]: whether head i's guess at position p was right (True/False), or None where
    the position has no target for head i (the window's end). Returns, for k = 1..K, the mean
    number of drafted tokens a chain of the first k heads gets accepted (the leading run of
    rights), over the positions where all k heads have a target."""
    if not matches:
        return []
    k_max = len(matches[0])
    out = []
    for k in range(1, k_max + 1):
        total, n = 0, 0
        for row in matches:
            if any(m is None for m in row[:k]):
                continue
            run = 0
            for m in row[:k]:
                if not m:
                    break
                run += 1
            total += run
            n += 1
        out.append(total / n if n else None)
    return out


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine down to 10% of the peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    f = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f)))


def read_docs(path: str, max_chars: int) -> list:
    """Rendered documents of a *_train.jsonl.gz or held-out .jsonl file, up to max_chars (0 = all)."""
    return tt.read_jsonl_docs(path, max_chars)["texts"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="models", help="the model tree (holds philora-tiny/)")
    ap.add_argument("--corpus", default=".corpus", help="the *_train.jsonl.gz files")
    ap.add_argument("--heldout", default="models/heldout", help="the held-out .jsonl files")
    ap.add_argument("--out", help="writes OUT/medusa/ (default: --models)")
    ap.add_argument("--heads", type=int, default=DEFAULTS["heads"])
    ap.add_argument("--seconds", type=float, help=f"training time budget (default {DEFAULTS['seconds']:.0f})")
    ap.add_argument("--adapters", default="kjv",
                    help="comma-separated adapters of MODELS/adapters/ that get heads of their own, trained on "
                         "their domain's text ('' = none); written beside the adapter")
    ap.add_argument("--adapter-seconds", type=float, help="training time budget per adapter (default "
                                                        f"{DEFAULTS['adapter_seconds']:.0f})")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--max-chars", type=int, help="rendered characters read from each training file (0 = all)")
    ap.add_argument("--chat-fraction", type=float, default=DEFAULTS["chat_fraction"])
    ap.add_argument("--eval-windows", type=int, help="held-out windows (and continued prompts) scored per file")
    ap.add_argument("--gen-fraction", type=float, help="share of a step's tokens from the model's own greedy "
                                                       f"continuations (default {DEFAULTS['gen_fraction']}; 0 = text only)")
    ap.add_argument("--gen-seconds", type=float, help="time budget for generating continuations, per set")
    ap.add_argument("--gen-prompt", type=int, help="prompt tokens of a generated sequence")
    ap.add_argument("--gen-new", type=int, help="greedy tokens generated after each prompt")
    ap.add_argument("--gen-batch", type=int, help="prompts continued at once")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--smoke", action="store_true", help="tiny budgets: the same code paths in seconds")
    ap.add_argument("--self-test", action="store_true", help="test the pure-Python parts (no torch) and exit")
    return ap


def resolve(args) -> list:
    base = dict(DEFAULTS, **(SMOKE if args.smoke else {}))
    for k in ("seconds", "adapter_seconds", "batch", "seq_len", "warmup", "max_chars", "eval_windows", "gen_fraction",
              "gen_seconds", "gen_prompt", "gen_new", "gen_batch"):
        if getattr(args, k) is None:
            setattr(args, k, base[k])
    args.out = args.out or args.models
    args.adapters = [a for a in (args.adapters.split(",") if isinstance(args.adapters, str) else args.adapters) if a]
    bad = [f"--adapters: '{a}' is not one of {[x['name'] for x in tt.ADAPTERS]}" for a in args.adapters
           if a not in [x["name"] for x in tt.ADAPTERS]]
    if not 1 <= args.heads <= 16:
        bad.append(f"--heads {args.heads}: expected 1..16")
    if args.batch < 1 or args.seq_len < 8 or args.seq_len > tt.CONTEXT:
        bad.append(f"--batch {args.batch} / --seq-len {args.seq_len}: expected batch >= 1, 8 <= seq-len <= "
                   f"{tt.CONTEXT}")
    if args.seconds <= 0 or args.lr <= 0 or not 0 <= args.chat_fraction < 1:
        bad.append("--seconds and --lr must be positive, --chat-fraction in [0, 1)")
    if not 0 <= args.gen_fraction < 1 or args.gen_seconds <= 0 or args.gen_prompt < 1 or args.gen_new <= args.heads \
            or args.gen_batch < 1 or args.gen_prompt + args.gen_new > tt.CONTEXT:
        bad.append(f"--gen-fraction in [0, 1), --gen-seconds > 0, --gen-new > --heads, --gen-prompt + --gen-new <= "
                   f"{tt.CONTEXT}")
    return bad


def gen_rows(batch: int, seq_len: int, gen_fraction: float, gen_len: int) -> int:
    """Generated sequences a step, so that they hold about gen_fraction of its tokens."""
    if gen_fraction <= 0:
        return 0
    return max(1, round(batch * seq_len * gen_fraction / (1 - gen_fraction) / gen_len))


def self_test() -> None:
    # chain acceptance
    T, F = True, False
    assert chain_accepts([]) == []
    got = chain_accepts([[T, T, F], [F, T, T], [T, None, None]])
    assert got[0] == 2 / 3 and got[1] == (2 + 0) / 2 and got[2] == (2 + 0) / 2, got
    assert chain_accepts([[T, T], [T, T]]) == [1.0, 2.0]
    # layout and config
    names = tensor_names(2)
    assert names == {"0.0.linear.weight": [384, 384], "0.0.linear.bias": [384],
                     "1.0.linear.weight": [384, 384], "1.0.linear.bias": [384]}, names
    cfg = medusa_config(4)
    assert cfg["medusa_num_heads"] == 4 and cfg["medusa_num_layers"] == 1
    # 4 heads in bf16 fit beside the model tree (the size budget is train_tiny's)
    assert sum(math.prod(s) for s in tensor_names(4).values()) * 2 < 1_300_000
    # schedule
    assert abs(lr_at(0, 1.0, 10, 100) - 0.1) < 1e-12 and lr_at(9, 1.0, 10, 100) == 1.0
    assert abs(lr_at(100, 1.0, 10, 100) - 0.1) < 1e-12 and abs(lr_at(55, 1.0, 10, 100) - 0.55) < 1e-12
    # arguments
    a = build_parser().parse_args(["--smoke"])
    assert resolve(a) == [] and a.seconds == SMOKE["seconds"] and a.out == "models" and a.adapters == ["kjv"]
    a = build_parser().parse_args(["--adapters", "kjv,nope"])
    assert len(resolve(a)) == 1
    a = build_parser().parse_args(["--adapters", ""])
    assert resolve(a) == [] and a.adapters == []
    a = build_parser().parse_args(["--heads", "0", "--seq-len", "4096"])
    assert len(resolve(a)) == 2
    a = build_parser().parse_args(["--gen-fraction", "1"])
    assert len(resolve(a)) == 1
    assert gen_rows(16, 1024, 0.0, 512) == 0 and gen_rows(16, 1024, 0.5, 512) == 32 and gen_rows(1, 8, 0.1, 512) == 1
    # documents render as train_tiny renders them
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.jsonl")
        with open(p, "w", encoding="utf-8") as f:
            f.write(json.dumps({"text": "abc"}) + "\n\n")
            f.write(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
        assert read_docs(p, 0) == ["abc<|endoftext|>", "<|user|>\nq<|end|>\n<|endoftext|>"]
        assert read_docs(p, 2) == ["abc<|endoftext|>"]
    print("train_medusa.py self-test: OK")


def train_set(ctx, name: str, causal, inner, lm_head, train: dict, counts: dict, held: dict, seconds: float,
              out: str) -> dict:
    """Trains K heads on `inner` (a Phi3Model, LoRA-wrapped for an adapter; frozen) whose logits are
    lm_head(h) (the teacher); the heads' own output is the base model's lm_head weight, as philora
    runs them. `causal` (the whole model) writes the greedy continuations. Writes
    OUT/{config.json, medusa_lm_head.safetensors}; returns the record."""
    args, torch, F, np, dev = ctx["args"], ctx["torch"], ctx["F"], ctx["np"], ctx["dev"]
    torch.manual_seed(args.seed)
    P, G = args.gen_prompt, args.gen_new

    def continue_greedily(prompts):
        """(n, P) prompts -> (n, P + G): the model's greedy continuation (end of text suppressed, so
        that every row has G new tokens; the targets still come from the model's own distribution)."""
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            return causal.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=G,
                                   min_new_tokens=G, do_sample=False, use_cache=True, pad_token_id=0,
                                   eos_token_id=0)

    def prompts_from(stream, n, rng_):
        s = torch.from_numpy(stream.astype(np.int64)).to(dev)
        starts = rng_.integers(0, s.shape[0] - P, size=n)
        return s[torch.from_numpy(starts).to(dev)[:, None] + torch.arange(P, device=dev)[None, :]]

    # The self-distillation pool: continuations of training-text prompts, domains as the text batch
    # mixes them, within gen_seconds.
    n_gen = gen_rows(sum(counts.values()), args.seq_len, args.gen_fraction, P + G)
    pool, t_gen, gen_took = [], time.time(), 0.0
    if n_gen:
        grng = np.random.default_rng(args.seed + 1)
        doms = [d for d in counts if counts[d]]
        weights = np.asarray([counts[d] for d in doms], dtype=np.float64)
        while time.time() - t_gen < args.gen_seconds or not pool:
            d = doms[int(grng.choice(len(doms), p=weights / weights.sum()))]
            pool.append(continue_greedily(prompts_from(train[d], args.gen_batch, grng)))
        pool = torch.cat(pool)
        gen_took = time.time() - t_gen
        log(f"{name}: {pool.shape[0]:,} greedy continuations of {P} + {G} tokens in {time.time() - t_gen:.1f}s; "
            f"{n_gen} a step")
    erng = np.random.default_rng(args.seed + 2)
    held_gen = {d: continue_greedily(prompts_from(stream, args.eval_windows, erng)) for d, stream in held.items()}
    lm_w = (lm_head.base_layer if hasattr(lm_head, "base_layer") else lm_head).weight.detach()  # (V, H)
    H, K = tt.MODEL["hidden_size"], args.heads
    W = torch.zeros(K, H, H, device=dev, requires_grad=True)
    b = torch.zeros(K, H, device=dev, requires_grad=True)
    opt = torch.optim.AdamW([W, b], lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def hidden(x):
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            h = inner(input_ids=x, use_cache=False).last_hidden_state
            teacher = lm_head(h)
        return h.float(), teacher

    def head_logits(h, i):
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            xi = h + F.silu(h @ W[i].T + b[i])
            return xi @ lm_w.T

    def loss_of(x, first=0):
        """Mean over heads of the soft cross-entropy at positions t >= first."""
        h, teacher = hidden(x)
        total = 0.0
        for i in range(K):
            T = x.shape[1] - 1 - i  # positions t with a teacher at t + 1 + i
            target = F.softmax(teacher[:, first + 1 + i:, :].float(), dim=-1)
            logits = head_logits(h[:, first:T], i).float()
            total = total + -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        return total / K

    def step_loss():
        text = loss_of(batch())
        if not n_gen:
            return text
        rows = torch.from_numpy(rng.integers(0, pool.shape[0], size=n_gen)).to(dev)
        # the continuation's positions: from the prompt's last token (head i guesses P + 1 + i)
        return (1 - args.gen_fraction) * text + args.gen_fraction * loss_of(pool[rows], first=P - 1)

    rng = np.random.default_rng(args.seed)
    gpu = {d: torch.from_numpy(train[d].astype(np.int64)).to(dev) for d in counts if counts[d]}
    ar = torch.arange(args.seq_len, device=dev)

    def batch():
        parts = []
        for d, t in gpu.items():
            starts = rng.integers(0, t.shape[0] - args.seq_len, size=counts[d])
            parts.append(t[torch.from_numpy(starts).to(dev)[:, None] + ar[None, :]])
        return torch.cat(parts)

    def score(wins, first):
        """Per head: argmax agreement with the model at t + 1 + i (positions t >= first); chain acceptance."""
        matches, agree, counted = [], [0] * K, [0] * K
        for x in wins:
            x = x[None]
            h, teacher = hidden(x)
            want = teacher[0].argmax(-1)  # the model's greedy token after each position
            L = x.shape[1]
            rows = [[None] * K for _ in range(L - first)]
            for i in range(K):
                ok = (head_logits(h, i)[0].argmax(-1)[first:L - 1 - i] == want[first + 1 + i:]).tolist()
                agree[i] += sum(ok)
                counted[i] += len(ok)
                for t, m in enumerate(ok):
                    rows[t][i] = m
            matches += rows
        return {"head_agreement": [a / max(1, c) for a, c in zip(agree, counted)],
                "chain_accepted": chain_accepts(matches), "positions": len(matches)}

    def evaluate():
        """Held-out windows (teacher-forced), and the model's continuations of held-out prompts."""
        res = {}
        with torch.no_grad():
            for d, stream in held.items():
                s = torch.from_numpy(stream.astype(np.int64)).to(dev)
                w = args.seq_len - 1
                wins = [torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), s[i:i + w]])
                        for i in range(0, max(1, s.shape[0] - w), w)][:args.eval_windows]
                res[d] = score(wins, 0)
                res[d]["continued"] = score(list(held_gen[d]), P - 1)
        return res

    before = evaluate()
    log(f"{name}: before training: {json.dumps(before)}")
    t_train = time.time()
    step, losses, planned = 0, [], None
    while True:
        elapsed = time.time() - t_train
        if planned is None and step == 20:
            planned = max(step + 1, int(step * seconds / max(1e-6, elapsed)))
        if (planned is not None and step >= planned) or elapsed > seconds * 1.1:
            break
        lr = lr_at(step, args.lr, args.warmup, planned or 10 ** 9)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([W, b], 1.0)
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 100 == 0:
            log(f"{name}: step {step}/{planned}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}, lr {lr:.2e}")
    took = time.time() - t_train
    after = evaluate()
    log(f"{name}: {step} steps in {took:.1f}s; after training: {json.dumps(after)}")

    os.makedirs(out, exist_ok=True)
    tensors = {}
    for i in range(K):
        tensors[f"{i}.0.linear.weight"] = W[i].detach().to(torch.bfloat16).contiguous().cpu()
        tensors[f"{i}.0.linear.bias"] = b[i].detach().to(torch.bfloat16).contiguous().cpu()
    ctx["save_file"](tensors, os.path.join(out, "medusa_lm_head.safetensors"))
    tt.write_json(os.path.join(out, "config.json"), medusa_config(K))
    return {"model": name, "train_tokens": {d: int(train[d].shape[0]) for d in counts if counts[d]},
            "sequences_per_step": counts, "seq_len": args.seq_len, "steps": step,
            "tokens_seen": step * sum(counts.values()) * args.seq_len, "seconds": round(took, 1),
            "generated": {"sequences": int(pool.shape[0]) if n_gen else 0, "prompt": P, "new": G,
                          "per_step": n_gen, "fraction": args.gen_fraction,
                          "seconds": round(gen_took, 1)},
            "loss_first_20": sum(losses[:20]) / max(1, len(losses[:20])),
            "loss_last_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "heldout_before": before, "heldout_after": after}


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.self_test:
        self_test()
        return 0
    bad = resolve(args)
    if bad:
        ap.error("; ".join(bad))
    import numpy as np
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import Phi3ForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = {"args": args, "torch": torch, "F": F, "np": np, "dev": dev, "save_file": save_file}
    model_dir = os.path.join(args.models, tt.MODEL_DIRNAME)
    log(f"train_medusa.py v{SCRIPT_VERSION}{' SMOKE' if args.smoke else ''}: {model_dir}, {args.heads} heads, "
        f"base {args.seconds:.0f}s, adapters {args.adapters} {args.adapter_seconds:.0f}s each, batch {args.batch} x "
        f"{args.seq_len}, device {dev}")
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))

    def encode(docs):
        ids = []
        for i in range(0, len(docs), 4096):
            for e in tok.encode_batch(docs[i:i + 4096], add_special_tokens=False):
                ids.extend(e.ids)
        return np.asarray(ids, dtype=np.int32)

    def load_base():
        for kw in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16}):
            try:
                m = Phi3ForCausalLM.from_pretrained(model_dir, local_files_only=True, attn_implementation="sdpa",
                                                    **kw)
                break
            except TypeError:
                continue
        m = m.to(dev).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    record = {"script": {"name": "tools/train_medusa.py", "version": SCRIPT_VERSION}, "smoke": args.smoke,
              "command": sys.argv, "args": vars(args), "seed": args.seed,
              "versions": {"torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None},
              "layout": "LoRAX MedusaV2: one residual block per head (x + SiLU(W x + b)), the base model's lm_head",
              "objective": "soft cross-entropy of head i at position t against the frozen model's (base, or base + "
                           "adapter) distribution at position t + 1 + i (self-distillation), mean over heads",
              "heldout_note": "teacher-forced on held-out text, and ('continued') on the model's greedy "
                              "continuations of held-out prompts (the continuation's positions); head_agreement[i] = "
                              "share of positions t where head i's argmax equals the model's argmax at t + 1 + i; "
                              "chain_accepted[k-1] = mean leading run of agreeing heads among the first k (drafted "
                              "tokens accepted per step)",
              "sets": {}}
    t = time.time()
    domains = list(TRAIN_DOMAINS) + [a for a in args.adapters if a not in TRAIN_DOMAINS]
    train, held = {}, {}
    for d in domains:
        train[d] = encode(read_docs(os.path.join(args.corpus, tt.CORPUS_FILES[d]), args.max_chars))
        held[d] = encode(read_docs(os.path.join(args.heldout, tt.HELDOUT_FILES[d]), 0))
    log("tokens: " + ", ".join(f"{d} {train[d].shape[0]:,} / held-out {held[d].shape[0]:,}" for d in domains)
        + f" ({time.time() - t:.1f}s)")

    model = load_base()
    n_chat = int(round(args.batch * args.chat_fraction)) if train["chat"].shape[0] > args.seq_len + 1 else 0
    record["sets"]["base"] = train_set(ctx, "base", model, model.model, model.lm_head, train,
                                       {"base": args.batch - n_chat, "chat": n_chat},
                                       {d: held[d] for d in TRAIN_DOMAINS}, args.seconds,
                                       os.path.join(args.out, "medusa"))
    tt.write_json(os.path.join(args.out, "medusa", "training.json"), record)
    for a in args.adapters:
        del model
        torch.cuda.empty_cache() if dev.type == "cuda" else None
        pm = PeftModel.from_pretrained(load_base(), os.path.join(args.models, "adapters", a), is_trainable=False)
        pm = pm.to(dev).eval()
        causal = pm.base_model.model  # the Phi3ForCausalLM with LoRA layers injected
        record["sets"][a] = train_set(ctx, a, pm, causal.model, causal.lm_head, train, {a: args.batch},
                                      {a: held[a]}, args.adapter_seconds, os.path.join(args.out, "adapters", a))
        tt.write_json(os.path.join(args.out, "medusa", "training.json"), record)
        model = pm
    for nm, r in record["sets"].items():
        for d, e in r["heldout_after"].items():
            for how, ev, ev0 in (("text", e, r["heldout_before"][d]),
                                 ("continued", e["continued"], r["heldout_before"][d]["continued"])):
                log(f"{nm:<6} on held-out {d:<6} {how:<9}: head agreement "
                    f"{', '.join(f'{v:.3f}' for v in ev['head_agreement'])}; accepted per step with k heads "
                    f"{', '.join(f'{v:.3f}' for v in ev['chain_accepted'])} (before: "
                    f"{', '.join(f'{v:.3f}' for v in ev0['chain_accepted'])})")
    log(f"done: {args.out}/medusa" + "".join(f", {args.out}/adapters/{a}" for a in args.adapters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
