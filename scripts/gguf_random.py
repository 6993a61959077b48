#!/usr/bin/env python3
"""Write a llama-architecture GGUF with random f16 weights and a byte vocabulary.

No model can be downloaded on the GPU host, and the watchdog needs only a model
that is real to llama.cpp and heavy enough to show in NVML: the defaults
(embedding 2048, 8 blocks, feed-forward 6144) make a file of about 0.9 GB that
``llama-server -ngl 99`` holds as about 1.7 GiB of GPU memory. The text it
writes is gibberish; the serving is real.

    PYTHONPATH=<llama.cpp>/gguf-py python scripts/gguf_random.py OUT.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path


def byte_vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    """``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens and ``▁``: every text encodes."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)] + ["▁".encode()]
    scores = [0.0] * len(tokens)
    types = [2, 3, 3] + [6] * 256 + [1]  # UNKNOWN, CONTROL, CONTROL, BYTE..., NORMAL
    return tokens, scores, types


def write_gguf(path: Path, embedding: int = 2048, blocks: int = 8, feed_forward: int = 6144,
               heads: int = 16, context: int = 4096, seed: int = 17) -> None:
    import numpy as np
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    tokens, scores, types = byte_vocabulary()

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("iw-random-f16")
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_file_type(1)  # mostly f16
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    ones = np.ones(embedding, dtype=np.float32)
    writer.add_tensor("token_embd.weight", matrix(len(tokens), embedding))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", matrix(len(tokens), embedding))
    for i in range(blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", matrix(embedding, embedding))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(feed_forward, embedding))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(feed_forward, embedding))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(embedding, feed_forward))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--embedding", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--feed-forward", type=int, default=6144)
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    write_gguf(Path(args.out), args.embedding, args.blocks, args.feed_forward, args.heads)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
