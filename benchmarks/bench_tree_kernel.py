"""The Triton tree-attention kernel against causal attention over the same query tokens (issue 10, point 3).

    python benchmarks/bench_tree_kernel.py --out benchmarks/results/tree_kernel_GPU.json     # on a CUDA GPU
    TRITON_INTERPRET=1 python benchmarks/bench_tree_kernel.py --smoke                        # CPU: correctness only

For every batch size B and new-token count q: B requests, each with `--context` cached tokens and q
new tokens laid out as SDSAT's tree step (x, drafts, a SAT block after x and each draft; a chain
when q is too small for a block) in vLLM's paged cache (scattered pages, the FlashAttention
backend's strided K/V views). Times (CUDA events, median of --reps) `paged_tree_attention` and,
over the same queries and keys, causal attention: FlashAttention's varlen kernel over the paged
cache when `flash_attn` is installed (vLLM's own decode path), else PyTorch SDPA with a lower-right
causal mask over contiguous K/V (which skips the page gather the tree kernel does). Checks the
kernel against `paged_tree_attention_reference` on every shape first. Writes JSON and a markdown
table with the GPU's name; the goal is tree ≤ 1.3x causal at ≤ 64 new tokens.

--smoke runs tiny shapes on whatever device there is (CPU: the Triton interpreter) and checks only
correctness: timings from the interpreter mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tree_parents(q: int) -> list[int]:
    """Parents of SDSAT's tree step with the most drafts m whose step fits q tokens (blocks of m SATs):
    a chain when q is too small for one block after x; the first q tokens of the layout otherwise."""
    from sdsat_vllm.decoding.tree import chain_layout

    best = None
    for m in range(1, 8):
        layout = chain_layout([0], [0] * m, [0] * m, block_at="all")
        if layout.q_len <= q:
            best = layout
    if best is None:
        return list(range(-1, q - 1))
    parents = best.parents + list(range(best.q_len - 1, q - 1))  # pad with a chain after the last block
    return parents[:q]


def make_step(batch: int, q: int, context: int, heads: int, kv_heads: int, head_dim: int, block_size: int,
              dtype: torch.dtype, device: str, seed: int = 0):
    """vLLM-shaped inputs of one tree step (the FlashAttention backend's cache layout)."""
    from sdsat_vllm.decoding.tree import ancestor_mask_words, tree_ancestor_matrix
    from sdsat_vllm.kernels.tree_attention import split_kv_cache

    gen = torch.Generator().manual_seed(seed)
    seq = context + q
    pages = math.ceil(seq / block_size)
    num_blocks = batch * pages + 1
    # physical [num_blocks, block_size, kv_heads, 2 * head_dim], viewed [num_blocks, kv_heads, block_size, 2 * head_dim]
    kv = torch.randn(num_blocks, block_size, kv_heads, 2 * head_dim, generator=gen).to(dtype).to(device)
    key_cache, value_cache = split_kv_cache(kv.transpose(1, 2), head_dim)
    perm = torch.randperm(num_blocks, generator=gen)[: batch * pages]
    block_tables = perm.view(batch, pages).int().to(device)
    query = torch.randn(batch * q, heads, head_dim, generator=gen).to(dtype).to(device)
    cu = (torch.arange(batch + 1) * q).int().to(device)
    seq_lens = torch.full((batch,), seq, dtype=torch.int32, device=device)
    words = ancestor_mask_words(tree_ancestor_matrix(tree_parents(q))).repeat(batch).to(device)
    return dict(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                cu_seqlens_q=cu, seq_lens=seq_lens, mask_words=words)


def causal_baseline(args: dict, q: int, context: int):
    """A callable running causal attention over the same queries and keys, and its name."""
    query, kc, vc, bt = args["query"], args["key_cache"], args["value_cache"], args["block_tables"]
    batch = bt.shape[0]
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore

        seqused = args["seq_lens"]

        def run():
            return flash_attn_varlen_func(query, kc, vc, cu_seqlens_q=args["cu_seqlens_q"], max_seqlen_q=q,
                                          seqused_k=seqused, max_seqlen_k=context + q, causal=True,
                                          block_table=bt)

        run()
        return run, "flash_attn varlen (paged)"
    except Exception:
        pass
    from torch.nn.attention.bias import causal_lower_right

    seq = context + q
    pos = torch.arange(seq, device=query.device)
    blocks = bt.long()[:, pos // kc.shape[1]]
    # contiguous [B, kv_heads, seq, head_dim]: the baseline does not gather pages
    k = kc[blocks, pos % kc.shape[1]].transpose(1, 2).contiguous()
    v = vc[blocks, pos % kc.shape[1]].transpose(1, 2).contiguous()
    qq = query.view(batch, q, query.shape[1], query.shape[2]).transpose(1, 2)
    mask = causal_lower_right(q, seq)

    def run():
        return torch.nn.functional.scaled_dot_product_attention(qq, k, v, attn_mask=mask, enable_gqa=True)

    run()
    return run, "torch SDPA, lower-right causal (contiguous K/V)"


def time_cuda(fn, reps: int) -> float:
    """Median milliseconds of fn() over reps runs (CUDA events; after 3 warm-up runs)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--new-tokens", type=int, nargs="+", default=[1, 8, 16, 36, 64])
    p.add_argument("--context", type=int, default=1024, help="cached tokens per request")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128, choices=[64, 128])
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, correctness only (CPU: TRITON_INTERPRET=1)")
    p.add_argument("--out", default=None, help="JSON here, the markdown table beside it")
    args = p.parse_args(argv)

    from sdsat_vllm.kernels.tree_attention import paged_tree_attention, paged_tree_attention_reference

    cuda = torch.cuda.is_available()
    if args.smoke:
        args.batch_sizes, args.new_tokens, args.context = [1, 3], [1, 11], 40
        args.heads, args.kv_heads, args.head_dim, args.dtype = 4, 2, 64, "float32"
    elif not cuda:
        print("no CUDA GPU: timings need one (use --smoke for a correctness run on CPU)", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    rows = []
    for batch in args.batch_sizes:
        for q in args.new_tokens:
            step = make_step(batch, q, args.context, args.heads, args.kv_heads, args.head_dim, args.block_size,
                             dtype, device)
            got = paged_tree_attention(**step, max_query_len=q)
            want = paged_tree_attention_reference(**step)
            err = (got.float() - want.float()).abs().max().item()
            if not err <= tol * max(1.0, want.abs().max().item()):
                print(f"B={batch} q={q}: kernel differs from the reference by {err}", file=sys.stderr)
                return 1
            row = dict(batch_size=batch, new_tokens=q, max_abs_err=err)
            if not args.smoke:
                run_causal, baseline = causal_baseline(step, q, args.context)
                tree_ms = time_cuda(lambda: paged_tree_attention(**step, max_query_len=q, check_values=False),
                                    args.reps)
                causal_ms = time_cuda(run_causal, args.reps)
                row.update(tree_ms=tree_ms, causal_ms=causal_ms, ratio=tree_ms / causal_ms, baseline=baseline)
            rows.append(row)
            print(json.dumps(row))
    meta = dict(command=" ".join(["bench_tree_kernel.py"] + list(argv if argv is not None else sys.argv[1:])),
                commit=commit(), device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                torch=torch.__version__, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                settings={k: v for k, v in vars(args).items() if k != "out"})
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
        lines = [f"# Tree-attention kernel vs causal attention ({meta['device']})", "",
                 f"Command: `{meta['command']}`  ", f"Commit: {meta['commit']}  ",
                 f"torch {meta['torch']}; {meta['time']}", "",
                 "| B | new tokens | tree ms | causal ms | tree / causal | max abs err |",
                 "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['batch_size']} | {r['new_tokens']} | {r.get('tree_ms', float('nan')):.3f} | "
                         f"{r.get('causal_ms', float('nan')):.3f} | {r.get('ratio', float('nan')):.2f} | "
                         f"{r['max_abs_err']:.1e} |")
        if rows and "baseline" in rows[0]:
            lines += ["", f"Causal baseline: {rows[0]['baseline']}. Goal: tree / causal ≤ 1.3 at ≤ 64 new tokens."]
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
