#!/usr/bin/env python3
"""PyTorch baselines for the GPU benchmarks, timed with CUDA events on the GPU machine.

Two parts, written to one JSON file that `stagformer-bench-report --torch FILE` reads:

* kernels: the PyTorch equivalents of our kernel benches at the same shapes, read from the
  `roofline.json` that `benches/kernels.rs` writes (ids are copied, so the report pairs each
  result with ours): `F.rms_norm` for rmsnorm, `x + residual` then `F.rms_norm` for
  add_rmsnorm, `F.linear` for linear, and `F.scaled_dot_product_attention` for
  attention_decode (shape keys batch, heads, kv_heads, head_dim, context; default shapes when
  the roofline lists none). Timed like ours: operand copies rotated so that one pass exceeds
  4x the L2, the stream held by `torch.cuda._sleep` while a batch of launches is queued.

* decode: a minimal Llama written here (no `transformers`), loaded from the p = 1 checkpoint
  our CLI writes (`stagformer init --config CFG --dtype bf16`; with stag_sections = 1 it is a
  Hugging Face Llama layout, docs/MODEL.md), with a static KV cache and SDPA. Milliseconds per
  decode step, eager and the same step captured in a CUDA graph (and with --compile,
  torch.compile(mode="reduce-overhead")). `--check LOGITS` first compares the model, in
  float32, against `stagformer score --mode forward` logits of the same checkpoint.

Usage (from the repository root, on the GPU machine):

    python3 python/torch_compare.py --roofline target/criterion/roofline.json \\
        --model /tmp/llama-p1 --out torch.json
"""

import argparse
import json
import os
import statistics
import sys
import time

SCHEMA = "stagformer-torch/1"
# One pass over the rotated operand copies must exceed this many bytes (4x an H100's L2).
ROTATE_BYTES = 200_000_000
MAX_COPIES = 64
# Launches queued behind one _sleep.
BATCH = 64

DEFAULT_ATTENTION = [
    # (batch, heads, kv_heads, head_dim, context): the 1.3b preset's heads.
    (1, 16, 8, 128, 1024),
    (1, 16, 8, 128, 4096),
    (8, 16, 8, 128, 1024),
    (8, 16, 8, 128, 4096),
]


def copies_for(set_bytes):
    """Operand copies so that one pass over them is at least ROTATE_BYTES (2..MAX_COPIES)."""
    return max(2, min(MAX_COPIES, -(-ROTATE_BYTES // max(1, set_bytes))))


def attention_id(batch, heads, kv_heads, head_dim, context, variant="bf16"):
    shape = f"batch={batch},heads={heads},kv_heads={kv_heads},head_dim={head_dim},context={context}"
    return f"attention_decode/{variant}/{shape}"


def kernel_cases(roofline):
    """(id, kernel, shape dict) for every bench we have an equivalent for."""
    cases = []
    benches = roofline.get("benches", []) if roofline else []
    for b in benches:
        shape = dict(b.get("shape", {}))
        # Windowed cross-attention sees only `window` keys: SDPA over the whole context is not
        # its equivalent.
        if b.get("kernel") == "attention_decode" and "window" in shape:
            continue
        if b.get("kernel") in ("rmsnorm", "add_rmsnorm", "linear", "attention_decode"):
            cases.append((b["id"], b["kernel"], shape))
    if not any(k == "attention_decode" for _, k, _ in cases):
        for batch, heads, kv_heads, head_dim, context in DEFAULT_ATTENTION:
            shape = dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                         context=context)
            cases.append((attention_id(batch, heads, kv_heads, head_dim, context),
                          "attention_decode", shape))
    return cases


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    sections = cfg.get("stag_sections") or 1
    if sections != 1:
        raise SystemExit(f"{model_dir}: stag_sections = {sections}; the PyTorch baseline is the "
                         "plain Llama (p = 1)")
    d = cfg["hidden_size"]
    h = cfg["num_attention_heads"]
    return {
        "vocab": cfg["vocab_size"],
        "d": d,
        "ffn": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": h,
        "kv_heads": cfg.get("num_key_value_heads") or h,
        "head_dim": cfg.get("head_dim") or d // h,
        "eps": cfg.get("rms_norm_eps") or 1e-6,
        "theta": cfg.get("rope_theta") or 10000.0,
        "tied": bool(cfg.get("tie_word_embeddings") or False),
    }


def checkpoint_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    return [os.path.join(model_dir, "model.safetensors")]


# -------------------------------------------------------------------------------------------
# Everything below needs torch (present on the GPU machine).
# -------------------------------------------------------------------------------------------

def sleep_cycles_per_ms(torch):
    """Calibrates torch.cuda._sleep: clock cycles per millisecond."""
    cycles = 10_000_000
    torch.cuda._sleep(cycles // 10)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / max(start.elapsed_time(end), 1e-3)


def gpu_time_us(torch, call, copies, cycles_per_ms, repeats=15):
    """Median GPU time of one call (µs), over `repeats` gated batches of BATCH calls."""
    for i in range(3):
        call(i % copies)
    torch.cuda.synchronize()
    # How long the host takes to queue a batch: the gate must outlast it.
    t0 = time.perf_counter()
    for i in range(BATCH):
        call(i % copies)
    host_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    gate = int(cycles_per_ms * (2.0 * host_ms + 0.2))
    samples = []
    n = 0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(gate)
        start.record()
        for _ in range(BATCH):
            call(n % copies)
            n += 1
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / BATCH)
    return statistics.median(samples)


def rand(torch, shape, dtype):
    # Uniform in [-1, 1): never zeros, which can run faster than real data.
    return torch.rand(shape, device="cuda", dtype=torch.float32).mul_(2).sub_(1).to(dtype)


def time_kernel(torch, F, kernel, shape, cycles_per_ms):
    bf16 = torch.bfloat16
    if kernel in ("rmsnorm", "add_rmsnorm"):
        rows, d = shape["rows"], shape["d"]
        streams = 2 if kernel == "rmsnorm" else 4
        copies = copies_for(rows * d * 2 * streams)
        x = [rand(torch, (rows, d), bf16) for _ in range(copies)]
        w = [rand(torch, (d,), bf16) for _ in range(copies)]
        if kernel == "rmsnorm":
            op = "F.rms_norm (bf16 weight)"

            def call(i):
                F.rms_norm(x[i], (d,), w[i], 1e-6)
        else:
            op = "x + residual; F.rms_norm (bf16 weight)"
            r = [rand(torch, (rows, d), bf16) for _ in range(copies)]

            def call(i):
                F.rms_norm(x[i] + r[i], (d,), w[i], 1e-6)
    elif kernel == "linear":
        m, n, k = shape["m"], shape["n"], shape["k"]
        copies = copies_for((m * k + n * k + m * n) * 2)
        x = [rand(torch, (m, k), bf16) for _ in range(copies)]
        w = [rand(torch, (n, k), bf16) for _ in range(copies)]
        op = "F.linear"

        def call(i):
            F.linear(x[i], w[i])
    elif kernel == "attention_decode":
        b, h, hkv, hd, t = (shape["batch"], shape["heads"], shape["kv_heads"], shape["head_dim"],
                            shape["context"])
        copies = copies_for(2 * b * hkv * t * hd * 2)
        # Decode: one query per sequence. Grouping each kv head's query heads into the query
        # length lets every SDPA backend serve GQA without copying keys and values.
        q = [rand(torch, (b, hkv, h // hkv, hd), bf16) for _ in range(copies)]
        k = [rand(torch, (b, hkv, t, hd), bf16) for _ in range(copies)]
        v = [rand(torch, (b, hkv, t, hd), bf16) for _ in range(copies)]
        op = "F.scaled_dot_product_attention (query heads grouped per kv head)"

        def call(i):
            F.scaled_dot_product_attention(q[i], k[i], v[i])
    else:
        return None
    us = gpu_time_us(torch, call, copies, cycles_per_ms)
    del call
    torch.cuda.empty_cache()
    return op, us


class Llama:
    """A plain Llama decoder with a static KV cache, for batch `batch` and `capacity` positions."""

    def __init__(self, torch, cfg, tensors, dtype, batch, capacity):
        self.torch, self.cfg = torch, cfg
        self.batch, self.capacity = batch, capacity
        t = {k: v.to(device="cuda", dtype=dtype) for k, v in tensors.items()}
        self.embed = t["model.embed_tokens.weight"]
        self.lm_head = self.embed if cfg["tied"] else t["lm_head.weight"]
        self.norm = t["model.norm.weight"]
        self.layers = []
        for i in range(cfg["layers"]):
            p = f"model.layers.{i}."
            self.layers.append({
                "in_norm": t[p + "input_layernorm.weight"],
                "post_norm": t[p + "post_attention_layernorm.weight"],
                # q, k and v in one product; gate and up in one product.
                "qkv": torch.cat([t[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], 0),
                "o": t[p + "self_attn.o_proj.weight"],
                "gate_up": torch.cat([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]],
                                     0),
                "down": t[p + "mlp.down_proj.weight"],
            })
        hd, hkv = cfg["head_dim"], cfg["kv_heads"]
        shape = (cfg["layers"], batch, hkv, capacity, hd)
        self.k_cache = torch.zeros(shape, device="cuda", dtype=dtype)
        self.v_cache = torch.zeros(shape, device="cuda", dtype=dtype)
        m = torch.arange(0, hd, 2, device="cuda", dtype=torch.float32)
        self.inv_freq = 1.0 / (cfg["theta"] ** (m / hd))
        self.positions = torch.arange(capacity, device="cuda")

    def fill_cache(self, length):
        """Random keys and values for positions < length: decode speed does not depend on them."""
        torch = self.torch
        for c in (self.k_cache, self.v_cache):
            c[:, :, :, :length].copy_(torch.randn_like(c[:, :, :, :length]))

    def rope(self, x, pos):
        # x: [B, heads, hd]; Hugging Face layout: (x[m], x[m + hd/2]) turn by pos * inv_freq[m].
        torch = self.torch
        ang = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return (x.float() * cos + rot.float() * sin).to(x.dtype)

    def step(self, tokens, pos, length=None):
        """Logits [B, V] for `tokens` [B] at position `pos` (a 1-element tensor).

        `length` (a Python int, pos + 1) slices the cache to the keys in use, for eager runs;
        without it the whole cache is read under a mask, which keeps shapes static for CUDA
        graphs.
        """
        F, cfg = self.torch.nn.functional, self.cfg
        b, h, hkv, hd, d = self.batch, cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["d"]
        g = h // hkv
        posb = pos.expand(b)
        mask = None if length is not None else (self.positions <= pos).view(1, 1, 1, -1)
        x = F.embedding(tokens, self.embed)
        for i, layer in enumerate(self.layers):
            hn = F.rms_norm(x, (d,), layer["in_norm"], cfg["eps"])
            q, k, v = F.linear(hn, layer["qkv"]).split([h * hd, hkv * hd, hkv * hd], -1)
            q = self.rope(q.view(b, h, hd), posb)
            k = self.rope(k.view(b, hkv, hd), posb)
            self.k_cache[i].index_copy_(2, pos, k.view(b, hkv, 1, hd))
            self.v_cache[i].index_copy_(2, pos, v.view(b, hkv, 1, hd))
            kc, vc = self.k_cache[i], self.v_cache[i]
            if length is not None:
                kc, vc = kc[:, :, :length], vc[:, :, :length]
            # Query head j uses kv head j // g: group them as g queries of their kv head.
            a = F.scaled_dot_product_attention(q.view(b, hkv, g, hd), kc, vc, attn_mask=mask)
            x = x + F.linear(a.reshape(b, h * hd), layer["o"])
            hn = F.rms_norm(x, (d,), layer["post_norm"], cfg["eps"])
            gate, up = F.linear(hn, layer["gate_up"]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, layer["down"])
        x = F.rms_norm(x, (d,), self.norm, cfg["eps"])
        return F.linear(x, self.lm_head)


def load_tensors(model_dir):
    from safetensors.torch import load_file
    tensors = {}
    for path in checkpoint_files(model_dir):
        tensors.update(load_file(path))
    return tensors


def check_model(torch, cfg, tensors, logits_path, tokens):
    """Decodes `tokens` one at a time in float32 (eager and masked paths) and compares the
    logits with `stagformer score --mode forward`."""
    from safetensors.torch import load_file
    want = load_file(logits_path)["logits"].to("cuda", torch.float64)
    worst = 0.0
    for masked in (False, True):
        model = Llama(torch, cfg, tensors, torch.float32, 1, len(tokens))
        rows = []
        for i, tok in enumerate(tokens):
            t = torch.tensor([tok], device="cuda")
            pos = torch.tensor([i], device="cuda")
            rows.append(model.step(t, pos, None if masked else i + 1)[0])
        got = torch.stack(rows).to(torch.float64)
        err = ((got - want).abs().max() / want.abs().max()).item()
        worst = max(worst, err)
        del model
    return worst


def time_decode(torch, cfg, tensors, batch, context, steps, use_compile):
    """ms per decode step at `context` tokens of history: eager, CUDA graph, compile."""
    results = []
    warm = 3
    model = Llama(torch, cfg, tensors, torch.bfloat16, batch, context + 3 * (warm + steps) + 64)
    model.fill_cache(context)
    tok = torch.randint(0, cfg["vocab"], (batch,), device="cuda")
    pos = torch.tensor([context], device="cuda")

    def timed(run_step, n):
        samples = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run_step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples)

    # Eager: the position is also known on the host, so attention reads exactly the keys in
    # use; on the device it advances in place (no host-to-device copy per step).
    state = {"p": context}
    pos_e = pos.clone()

    def eager():
        logits = model.step(tok, pos_e, state["p"] + 1)
        tok.copy_(logits.argmax(-1))
        pos_e.add_(1)
        state["p"] += 1

    with torch.inference_mode():
        for _ in range(warm):
            eager()
        results.append(("eager", timed(eager, steps)))

        # CUDA graph of one whole step, the position advancing on the device.
        pos.fill_(state["p"])

        def device_step():
            logits = model.step(tok, pos)
            tok.copy_(logits.argmax(-1))
            pos.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warm):
                device_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            device_step()
        results.append(("cuda_graph", timed(graph.replay, steps)))
        del graph

        if use_compile:
            try:
                compiled = torch.compile(device_step, mode="reduce-overhead")
                for _ in range(warm):
                    compiled()
                results.append(("compile", timed(compiled, steps)))
            except Exception as e:  # a compiler failure must not lose the other numbers
                print(f"torch.compile failed: {e}", file=sys.stderr)
    return results


def parse_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roofline", help="roofline.json from benches/kernels.rs (bench shapes)")
    ap.add_argument("--model", help="p = 1 checkpoint directory for the decode timing")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--batch", default="1", help="decode batch sizes, comma-separated")
    ap.add_argument("--context", default="1024", help="decode context lengths, comma-separated")
    ap.add_argument("--steps", type=int, default=50, help="timed decode steps per mode")
    ap.add_argument("--compile", action="store_true",
                    help='also time torch.compile(mode="reduce-overhead")')
    ap.add_argument("--check", metavar="LOGITS",
                    help="`stagformer score --mode forward` logits of --check-model to compare")
    ap.add_argument("--check-model", help="small p = 1 checkpoint for --check")
    ap.add_argument("--check-tokens", default="1,5,9,13,17,21,25,29",
                    help="the token ids --check's logits were scored on")
    ap.add_argument("--skip-kernels", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("torch_compare: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    out = {
        "schema": SCHEMA,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "kernels": [],
        "decode": [],
        "check": None,
    }

    def save():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    if args.check:
        cfg = read_config(args.check_model)
        worst = check_model(torch, cfg, load_tensors(args.check_model), args.check,
                            parse_list(args.check_tokens))
        ok = worst <= 1e-4
        out["check"] = {"max_rel_err": worst, "tolerance": 1e-4, "ok": ok}
        print(f"torch Llama vs stagformer score (f32): max rel err {worst:.2e} "
              f"{'ok' if ok else 'FAILED'}")
        save()
        if not ok:
            return 1

    if not args.skip_kernels:
        roofline = None
        if args.roofline and os.path.exists(args.roofline):
            with open(args.roofline) as f:
                roofline = json.load(f)
        cycles_per_ms = sleep_cycles_per_ms(torch)
        for bench_id, kernel, shape in kernel_cases(roofline):
            try:
                timed = time_kernel(torch, F, kernel, shape, cycles_per_ms)
            except Exception as e:  # report and go on: one bad shape must not lose the rest
                print(f"{bench_id}: failed: {e}", file=sys.stderr)
                continue
            if timed:
                op, us = timed
                out["kernels"].append({"id": bench_id, "op": op, "median_us": us})
                print(f"{bench_id:64s} {op:40.40s} {us:9.2f} us")
        save()

    if args.model:
        cfg = read_config(args.model)
        tensors = load_tensors(args.model)
        name = os.path.basename(os.path.normpath(args.model))
        for batch in parse_list(args.batch):
            for context in parse_list(args.context):
                timings = time_decode(torch, cfg, tensors, batch, context, args.steps,
                                      args.compile)
                # The model, its caches and the graph are gone with time_decode's frame.
                torch.cuda.empty_cache()
                for mode, ms in timings:
                    out["decode"].append({"model": name, "mode": mode, "batch": batch,
                                          "context": context, "ms_per_step": ms})
                    print(f"decode {name} batch {batch} context {context} {mode:10s} "
                          f"{ms:8.3f} ms/step")
                save()
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
