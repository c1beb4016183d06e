"""
make_random_gguf.py: a GGUF file for llama.cpp with the exact shapes of LLaVA-NeXT-Video-7B's language
model (Vicuna-7B: dim 4096, 32 layers, 32 heads, ffn 11008, vocab 32064) and random weights, so that
bench/vs_llamacpp.sh can time llama.cpp on the same workload as our random models from
bench/make_random_model.py.

    python3 bench/make_random_gguf.py OUT.gguf [--type q8_0|q4_0|f16] [--tokenizer test/data/tokenizer.model]

Needs numpy and the `gguf` Python package (pip install gguf). Every 2-D weight, token embedding and
output matrix included, is written in --type (what llama-quantize calls --pure); the norms are f32
ones. The quantized blocks are random codes with one fixed scale (weights uniform, std ~0.02): no
quantization is run, so a 7B file takes about as long as the disk needs to write it (7.2 GB q8_0,
3.8 GB q4_0), and tensors are written one at a time (little memory). Speed does not depend on the values.
The vocabulary is the llama SentencePiece model's 32000 pieces plus 64 "[PADn]" entries up to 32064.
"""
import argparse
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make_random_gguf.py: needs the `gguf` Python package (pip install gguf)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export  # noqa: E402  (its hand-written SentencePiece reader)

DIM, LAYERS, HEADS, FFN, VOCAB, CTX = 4096, 32, 32, 11008, 32064, 4096
STD = 0.02
# bytes per block of 32 weights, and the f16 scale that gives uniform weights of std STD
BLOCK = {"q8_0": (34, STD * 3 ** 0.5 / 127), "q4_0": (18, STD * 3 ** 0.5 / 8)}
QTYPE = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
         "f16": gguf.GGMLQuantizationType.F16}
FTYPE = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
         "f16": gguf.LlamaFileType.MOSTLY_F16}


def plan():
    """(name, rows, cols) in file order; rows x cols is numpy's (ne1, ne0)."""
    t = [("token_embd.weight", VOCAB, DIM)]
    for i in range(LAYERS):
        p = "blk.%d." % i
        t += [(p + "attn_norm.weight", 0, DIM),
              (p + "attn_q.weight", DIM, DIM), (p + "attn_k.weight", DIM, DIM),
              (p + "attn_v.weight", DIM, DIM), (p + "attn_output.weight", DIM, DIM),
              (p + "ffn_norm.weight", 0, DIM),
              (p + "ffn_gate.weight", FFN, DIM), (p + "ffn_up.weight", FFN, DIM),
              (p + "ffn_down.weight", DIM, FFN)]
    return t + [("output_norm.weight", 0, DIM), ("output.weight", VOCAB, DIM)]


def random_matrix(rng, typ, rows, cols):
    if typ == "f16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * STD).astype(np.float16)
    nb, d = BLOCK[typ]
    a = np.frombuffer(rng.bytes(rows * (cols // 32) * nb), np.uint8).reshape(rows, cols // 32, nb).copy()
    a[:, :, 0:2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)  # every block's scale
    return a.reshape(rows, cols // 32 * nb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(QTYPE), default="q8_0")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                        "..", "test", "data", "tokenizer.model"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    pieces = export.read_sentencepiece(a.tokenizer)
    if len(pieces) > VOCAB:
        sys.exit("make_random_gguf.py: %s has %d pieces, more than %d" % (a.tokenizer, len(pieces), VOCAB))
    tokens = [p[0] for p in pieces] + [b"[PAD%d]" % i for i in range(len(pieces), VOCAB)]
    scores = [float(p[1]) for p in pieces] + [-1000.0] * (VOCAB - len(pieces))
    types = [int(p[2]) for p in pieces] + [int(gguf.TokenType.UNUSED)] * (VOCAB - len(pieces))

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("random-vicuna-7b-shapes")
    w.add_file_type(int(FTYPE[a.type]))
    w.add_context_length(CTX)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(2.5)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    tensors = plan()
    for name, rows, cols in tensors:
        if rows == 0:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        elif a.type == "f16":
            w.add_tensor_info(name, (rows, cols), np.dtype(np.float16), rows * cols * 2)
        else:
            nb = BLOCK[a.type][0]
            w.add_tensor_info(name, (rows, cols // 32 * nb), np.dtype(np.uint8), rows * cols // 32 * nb,
                              raw_dtype=QTYPE[a.type])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    for i, (name, rows, cols) in enumerate(tensors):
        w.write_tensor_data(np.ones(cols, np.float32) if rows == 0 else random_matrix(rng, a.type, rows, cols))
        if name.endswith("ffn_down.weight") or i == len(tensors) - 1:
            print("\r%s: %d/%d tensors" % (a.out, i + 1, len(tensors)), end="", file=sys.stderr, flush=True)
    w.close()
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
