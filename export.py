"""
export.py: turn a Hugging Face LLaVA-NeXT-Video checkpoint directory into one llava.c model file.

    python3 export.py HF_DIR OUT.bin [--dtype f32|bf16|q8|q4] [--group-size N] [--vision-group-size 64] [--format 2]
    python3 export.py --tokenizer-only HF_DIR_or_tokenizer.model OUT.tok [--added-tokens "<video>,<image>"]

HF_DIR is what `save_pretrained` writes or what the hub holds for llava-hf/LLaVA-NeXT-Video-7B-hf:
config.json, model.safetensors (or model.safetensors.index.json + shards), tokenizer.model and/or
tokenizer.json, added_tokens.json / tokenizer_config.json, preprocessor_config.json (optional).

Needs numpy only. safetensors is read by hand (an 8-byte header length, a JSON header, raw data) and
memory-mapped, and tensors are converted and written one at a time, so a 7B export runs in a few GB of
RAM. Every checkpoint key must be used exactly once and every shape must match the config; anything
else is an error, because a silently ignored tensor is how ports go wrong.

The file layout (all little-endian; llava.c's `Config` struct mirrors HEADER_FIELDS):
  1. a 1024-byte header: magic "LLVA", version, every hyperparameter the forward pass uses;
  2. the tokenizer: per token f32 score, i32 type, u32 length, the piece's bytes;
  3. the tensors, each 64-byte aligned, in the order of `tensor_plan` below. Everything but the matmul
     weights (norms, biases, vision embeddings, image_newline) is f32. Matmul weights are in the chosen
     dtype; q8 stores int8 values, then f32 scales (rows, cols/group) with w ~= q * scale. q4 files hold
     two types: the language model's matrices (embed_tokens, the 7 per layer, lm_head) in q4 -- values
     u = q + 8 (q in -8..7), then bf16 scales with w ~= q * scale -- and the vision tower's and
     projector's matrices in q8 with their own group (header field vision_group_size). Per-layer
     tensors are stacked over layers (llama2.c style), each stack all values, then all scales.
     Format 2 (the default) stores each matmul weight in matmul.c's panel layout (`panels`, `q4_words`),
     so llava.c maps it and computes without copying, with q|k|v and gate|up fused into one matrix per
     layer; embed_tokens stays row-major (a lookup table). Format 1 (--format 1) stores rows (out, in),
     q4 as (rows, cols/2) bytes with input 2i in the low nibble and 2i+1 in the high one, and q/k/v,
     gate/up separately: llava.c re-packs it at every load.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

MAGIC = 0x41564C4C  # the bytes "LLVA"
VERSION = 2           # file format: 2 stores the matmul weights in the kernels' panels, 1 in rows
FORMATS = (1, 2)      # what --format writes (llava.c reads both; 1 is re-packed at every load)
HEADER_SIZE = 1024
ALIGN = 64
DTYPES = {"f32": 0, "bf16": 1, "q8": 2, "q4": 3}
Q8_GROUP = 64         # default q8 group (vision tower and projector of q4 files too): 8.5 bits/weight
Q4_GROUP = 64         # default q4 group, see --group-size's help for why
Q4_GROUP_MULT = 8     # q4 groups hold whole packed words of 8 inputs (matmul.c's MM_Q4_GROUP_MULT)
MAX_PINPOINTS = 16

# Header fields in file order: (name, struct format). llava.c reads the same order into `Config`.
HEADER_FIELDS = [
    ("magic", "I"), ("version", "i"), ("weight_type", "i"), ("group_size", "i"),
    # language model (Llama)
    ("dim", "i"), ("hidden_dim", "i"), ("n_layers", "i"), ("n_heads", "i"), ("n_kv_heads", "i"),
    ("head_dim", "i"), ("vocab_size", "i"), ("max_pos", "i"),
    ("rms_eps", "f"), ("rope_theta", "f"), ("rope_scale", "f"),
    # vision tower (CLIP)
    ("v_dim", "i"), ("v_hidden_dim", "i"), ("v_layers", "i"), ("v_heads", "i"),
    ("image_size", "i"), ("patch_size", "i"), ("n_channels", "i"), ("v_eps", "f"),
    ("v_act", "i"), ("feature_layer", "i"), ("select_strategy", "i"),
    # pooling + projector
    ("proj_act", "i"), ("pool_stride", "i"),
    # special token ids
    ("bos", "i"), ("eos", "i"), ("pad", "i"), ("unk", "i"), ("image_token", "i"), ("video_token", "i"),
    # image preprocessing
    ("image_mean", "3f"), ("image_std", "3f"),
    # anyres grid pinpoints, (height, width) pairs
    ("n_pinpoints", "i"), ("pinpoints", "%di" % (2 * MAX_PINPOINTS)),
    # tokenizer blob that follows the header
    ("n_tokens", "i"), ("tokenizer_bytes", "i"),
    # q4 files: the q8 group of the vision tower's and the projector's matrices (0 in other files;
    # added last, so files written before it read 0)
    ("vision_group_size", "i"),
]
ACTS = {"quick_gelu": 0, "gelu": 1}  # gelu = exact erf form (torch.nn.functional.gelu)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def die(msg):
    print("export.py: error: " + msg, file=sys.stderr)
    sys.exit(1)


# -----------------------------------------------------------------------------
# Tokenizer: SentencePiece model (hand-parsed protobuf) or tokenizer.json

SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


def _varint(buf, i):
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _proto_fields(buf):
    """Yield (field_number, wire_type, value) of one protobuf message (value: int or bytes)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
        if i > len(buf):
            raise ValueError("truncated protobuf field")
        yield field, wire, value


def read_sentencepiece(path):
    """tokenizer.model (sentencepiece ModelProto): field 1 = repeated SentencePiece {1 piece, 2 score, 3 type}."""
    with open(path, "rb") as f:
        buf = f.read()
    tokens = []
    try:
        for field, wire, value in _proto_fields(buf):
            if field != 1 or wire != 2:
                continue
            piece, score, typ = b"", 0.0, SP_NORMAL
            for f2, w2, v2 in _proto_fields(value):
                if f2 == 1 and w2 == 2:
                    piece = bytes(v2)
                elif f2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif f2 == 3 and w2 == 0:
                    typ = v2
            tokens.append([piece, score, typ])
    except ValueError as e:
        die("%s: not a sentencepiece model (%s)" % (path, e))
    if not tokens:
        die("%s: no pieces found; not a sentencepiece model" % path)
    return tokens


def read_tokenizer_json(path):
    """Fast-tokenizer file: BPE vocab + merges. Merge rank stands in for the sentencepiece score
    (a piece made by an earlier merge wins), which is how the Llama converter ordered them."""
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj.get("model", {})
    if model.get("type") != "BPE" or "vocab" not in model:
        die("%s: expected a BPE model with a vocab" % path)
    vocab = model["vocab"]
    n = max(vocab.values()) + 1
    tokens = [None] * n
    for piece, i in vocab.items():
        typ = SP_BYTE if (len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")) else SP_NORMAL
        tokens[i] = [piece.encode("utf-8"), 0.0, typ]
    if any(t is None for t in tokens):
        die("%s: vocab ids are not contiguous" % path)
    for rank, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is not None and tokens[i][1] == 0.0:
            tokens[i][1] = -float(rank + 1)
    for at in tj.get("added_tokens", []):
        if at["id"] < n:
            content = at["content"]
            tokens[at["id"]][2] = SP_UNKNOWN if content == "<unk>" else SP_CONTROL if at.get("special") else SP_USER_DEFINED
    return tokens


def added_tokens(hf_dir):
    """{content: id} of tokens added on top of the base vocabulary (<video>, <image>)."""
    out = {}
    p = os.path.join(hf_dir, "added_tokens.json")
    if os.path.exists(p):
        with open(p, encoding="utf-8") as f:
            out.update({k: int(v) for k, v in json.load(f).items()})
    p = os.path.join(hf_dir, "tokenizer_config.json")
    extra = []
    if os.path.exists(p):
        with open(p, encoding="utf-8") as f:
            tc = json.load(f)
        for i, t in tc.get("added_tokens_decoder", {}).items():
            out[t["content"]] = int(i)
        # transformers 5.x may list the added tokens without ids ("extra_special_tokens", a list or a
        # {name: token} dict); they then take the next free ids in order after the base vocabulary.
        for key in ("additional_special_tokens", "extra_special_tokens"):
            v = tc.get(key) or []
            extra += list(v.values()) if isinstance(v, dict) else list(v)
        extra = [t["content"] if isinstance(t, dict) else t for t in extra]
    p = os.path.join(hf_dir, "tokenizer.json")
    if os.path.exists(p):
        with open(p, encoding="utf-8") as f:
            for t in json.load(f).get("added_tokens", []):
                out[t["content"]] = int(t["id"])
    return out, [t for t in dict.fromkeys(extra) if t not in out]


def load_tokenizer(src):
    """Returns the token list [piece bytes, score, type] for ids 0..n-1 from a tokenizer.model path or an HF dir."""
    if os.path.isfile(src):
        return read_sentencepiece(src)
    sp, tj = os.path.join(src, "tokenizer.model"), os.path.join(src, "tokenizer.json")
    if os.path.exists(sp):
        tokens = read_sentencepiece(sp)
    elif os.path.exists(tj):
        tokens = read_tokenizer_json(tj)
    else:
        die("%s: no tokenizer.model or tokenizer.json" % src)
    with_ids, without_ids = added_tokens(src)
    for content, i in sorted(with_ids.items(), key=lambda kv: kv[1]):
        if i < len(tokens):
            continue  # <unk>, <s>, </s> are already sentencepiece pieces
        if i != len(tokens):
            die("%s: added token %r has id %d, expected %d (ids must be contiguous)" % (src, content, i, len(tokens)))
        tokens.append([content.encode("utf-8"), 0.0, SP_USER_DEFINED])
    known = {t[0] for t in tokens}
    for content in without_ids:
        if content.encode("utf-8") not in known:
            tokens.append([content.encode("utf-8"), 0.0, SP_USER_DEFINED])
    return tokens


def tokenizer_blob(tokens):
    parts = []
    for piece, score, typ in tokens:
        parts.append(struct.pack("<fiI", score, typ, len(piece)))
        parts.append(piece)
    return b"".join(parts)


# -----------------------------------------------------------------------------
# safetensors, read with numpy (memory-mapped)

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def open_safetensors(hf_dir):
    """Returns {key: (path, dtype, shape, offset)} over all shards."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        die("%s: no model.safetensors or model.safetensors.index.json" % hf_dir)
    entries = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
            die("%s: shard listed in the index is missing" % path)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                die("%s: truncated safetensors file" % path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                die("%s: header length %d exceeds the file size %d" % (path, n, size))
            try:
                header = json.loads(f.read(n))
            except ValueError:
                die("%s: safetensors header is not valid JSON" % path)
        for key, t in header.items():
            if key == "__metadata__":
                continue
            if t["dtype"] not in ST_DTYPES:
                die("%s: tensor %s has unsupported dtype %s" % (path, key, t["dtype"]))
            begin, end = t["data_offsets"]
            count = int(np.prod(t["shape"])) if t["shape"] else 1
            if end - begin != count * np.dtype(ST_DTYPES[t["dtype"]]).itemsize or 8 + n + end > size:
                die("%s: tensor %s is truncated or has inconsistent offsets" % (path, key))
            if key in entries:
                die("%s: tensor %s appears in two shards" % (path, key))
            entries[key] = (path, t["dtype"], tuple(t["shape"]), 8 + n + begin)
    return entries


def canonical_name(key):
    """Map both the legacy (4.42-style, what save_pretrained writes) and the in-memory 4.52+/5.x names
    (doc/model.md#checkpoint-and-config), and transformers 5.x's save format (no "vision_model." level), onto one
    spelling: vision.*, projector.*, image_newline, lm.*, lm_head."""
    for prefix, new in [("model.vision_tower.vision_model.", "vision."), ("vision_tower.vision_model.", "vision."),
                        ("model.vision_tower.", "vision."), ("vision_tower.", "vision."),  # 5.x drops vision_model.
                        ("model.multi_modal_projector.", "projector."), ("multi_modal_projector.", "projector."),
                        ("model.language_model.model.", "lm."), ("language_model.model.", "lm."),
                        ("model.language_model.", "lm."), ("language_model.lm_head.", "lm_head."),
                        ("lm_head.", "lm_head."), ("model.image_newline", "image_newline"),
                        ("image_newline", "image_newline")]:
        if key.startswith(prefix):
            return new + key[len(prefix):]
    return key


class Checkpoint:
    def __init__(self, hf_dir):
        self.entries = {}
        for key, e in open_safetensors(hf_dir).items():
            name = canonical_name(key)
            if name in self.entries:
                die("%s: tensor %s is stored twice (as %s too)" % (hf_dir, name, key))
            self.entries[name] = e + (key,)
        self.used = set()

    def has(self, name):
        return name in self.entries

    def get(self, name, shape):
        """The tensor as float32, checked against the expected shape. Each key may be read once."""
        if name not in self.entries:
            die("checkpoint is missing tensor %s" % name)
        if name in self.used:
            die("tensor %s used twice" % name)
        path, dtype, shp, offset, key = self.entries[name]
        if tuple(shp) != tuple(shape):
            die("%s: tensor %s has shape %s, expected %s from config.json" % (path, key, list(shp), list(shape)))
        self.used.add(name)
        a = np.memmap(path, dtype=ST_DTYPES[dtype], mode="r", offset=offset, shape=shp)
        if dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)

    def skip(self, name):
        """Mark a stored tensor as deliberately unused (e.g. CLIP position_ids buffers)."""
        if name in self.entries:
            self.used.add(name)

    def check_all_used(self):
        unused = sorted(self.entries[n][4] for n in self.entries if n not in self.used)
        if unused:
            die("checkpoint tensors not used by the export (unsupported variant?): %s" % ", ".join(unused[:10]))


# -----------------------------------------------------------------------------
# Config

def read_config(hf_dir):
    p = os.path.join(hf_dir, "config.json")
    if not os.path.exists(p):
        die("%s: no config.json" % hf_dir)
    with open(p) as f:
        try:
            cfg = json.load(f)
        except ValueError:
            die("%s: not valid JSON" % p)
    if cfg.get("model_type") not in ("llava_next_video", "llava_next", "llava"):
        die("%s: model_type %r is not llava_next_video" % (p, cfg.get("model_type")))
    tc, vc = cfg.get("text_config", {}), cfg.get("vision_config", {})
    if tc.get("model_type", "llama") != "llama":
        die("%s: text model %r is not supported (Llama only)" % (p, tc.get("model_type")))
    if vc.get("model_type", "clip_vision_model") != "clip_vision_model":
        die("%s: vision model %r is not supported (CLIP only)" % (p, vc.get("model_type")))
    if tc.get("attention_bias") or tc.get("mlp_bias"):
        die("%s: Llama with attention/mlp biases is not supported" % p)

    # Missing keys take the transformers class defaults (LlamaConfig, CLIPVisionConfig), as the hub
    # config of the 7B model leaves most of them out (doc/model.md#checkpoint-and-config).
    h = {}
    h["dim"] = tc.get("hidden_size", 4096)
    h["hidden_dim"] = tc.get("intermediate_size", 11008)
    h["n_layers"] = tc.get("num_hidden_layers", 32)
    h["n_heads"] = tc.get("num_attention_heads", 32)
    h["n_kv_heads"] = tc.get("num_key_value_heads") or h["n_heads"]
    h["head_dim"] = tc.get("head_dim") or h["dim"] // h["n_heads"]
    h["vocab_size"] = tc.get("vocab_size", 32000)
    h["max_pos"] = tc.get("max_position_embeddings", 2048)
    h["rms_eps"] = tc.get("rms_norm_eps", 1e-6)
    if tc.get("hidden_act", "silu") != "silu":
        die("%s: text hidden_act %r is not supported" % (p, tc.get("hidden_act")))
    if h["n_heads"] % h["n_kv_heads"] or h["head_dim"] % 2:
        die("%s: heads %d not a multiple of kv heads %d, or odd head_dim" % (p, h["n_heads"], h["n_kv_heads"]))

    # RoPE: transformers 4.x spells it rope_theta + rope_scaling {type|rope_type, factor};
    # 5.x spells it rope_parameters {rope_type, factor, rope_theta}.
    rp = tc.get("rope_parameters") or {}
    rs = tc.get("rope_scaling") or {}
    h["rope_theta"] = rp.get("rope_theta", tc.get("rope_theta", 10000.0))
    rope_type = rp.get("rope_type") or rs.get("rope_type") or rs.get("type") or "default"
    factor = rp.get("factor", rs.get("factor", 1.0))
    if rope_type == "default":
        factor = 1.0
    elif rope_type != "linear":
        die("%s: rope type %r is not supported (default or linear only)" % (p, rope_type))
    h["rope_scale"] = float(factor)

    h["v_dim"] = vc.get("hidden_size", 768)
    h["v_hidden_dim"] = vc.get("intermediate_size", 3072)
    h["v_layers"] = vc.get("num_hidden_layers", 12)
    h["v_heads"] = vc.get("num_attention_heads", 12)
    h["image_size"] = vc.get("image_size", 224)
    h["patch_size"] = vc.get("patch_size", 32)
    h["n_channels"] = vc.get("num_channels", 3)
    h["v_eps"] = vc.get("layer_norm_eps", 1e-5)
    v_act = vc.get("hidden_act", "quick_gelu")
    if v_act not in ACTS:
        die("%s: vision hidden_act %r is not supported" % (p, v_act))
    h["v_act"] = ACTS[v_act]
    grid = h["image_size"] // h["patch_size"]
    if h["image_size"] % h["patch_size"] or grid % 2:
        # the 2x2 pool floors an odd grid while the processor counts grid^2 // 4 tokens per frame
        die("%s: image_size/patch_size must be an even integer (the 2x2 video pooling needs an even patch grid)" % p)

    fl = cfg.get("vision_feature_layer", -2)
    if not isinstance(fl, int):
        die("%s: vision_feature_layer %r: only a single layer is supported" % (p, fl))
    if not -(h["v_layers"] + 1) <= fl <= h["v_layers"]:
        die("%s: vision_feature_layer %d out of range for %d layers" % (p, fl, h["v_layers"]))
    h["feature_layer"] = fl
    strategies = {"default": 0, "full": 1}
    s = cfg.get("vision_feature_select_strategy", "default")
    if s not in strategies:
        die("%s: vision_feature_select_strategy %r is not supported" % (p, s))
    h["select_strategy"] = strategies[s]
    pa = cfg.get("projector_hidden_act", "gelu")
    if pa != "gelu":
        die("%s: projector_hidden_act %r is not supported" % (p, pa))
    h["proj_act"] = 0
    if cfg.get("spatial_pool_mode", "average") != "average":
        die("%s: spatial_pool_mode %r is not supported" % (p, cfg.get("spatial_pool_mode")))
    h["pool_stride"] = cfg.get("spatial_pool_stride", 2)

    h["bos"] = tc.get("bos_token_id", 1)
    h["eos"] = tc.get("eos_token_id", 2)
    if isinstance(h["eos"], list):
        h["eos"] = h["eos"][0]
    h["pad"] = tc.get("pad_token_id", cfg.get("pad_token_id", 0))
    if h["pad"] is None:
        h["pad"] = -1
    h["unk"] = 0
    h["image_token"] = cfg.get("image_token_index", cfg.get("image_token_id", 32001))
    h["video_token"] = cfg.get("video_token_index", cfg.get("video_token_id", 32000))

    mean, std = CLIP_MEAN, CLIP_STD
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        pp = os.path.join(hf_dir, name)
        if os.path.exists(pp):
            with open(pp) as f:
                pc = json.load(f)
            mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
            size = pc.get("size", {}).get("shortest_edge", h["image_size"])
            if size != h["image_size"]:
                die("%s: shortest_edge %d differs from the vision image_size %d" % (pp, size, h["image_size"]))
            break
    h["image_mean"], h["image_std"] = list(mean), list(std)

    pins = cfg.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    if len(pins) > MAX_PINPOINTS:
        die("%s: more than %d grid pinpoints" % (p, MAX_PINPOINTS))
    h["n_pinpoints"] = len(pins)
    h["pinpoints"] = [int(x) for hw in pins for x in hw] + [0] * (2 * (MAX_PINPOINTS - len(pins)))
    h["tie_word_embeddings"] = cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    h["projector_bias"] = cfg.get("multimodal_projector_bias", True)
    return h


def pack_header(h):
    out = b""
    for name, fmt in HEADER_FIELDS:
        v = h[name]
        out += struct.pack("<" + fmt, *(v if isinstance(v, (list, tuple)) else [v]))
    assert len(out) <= HEADER_SIZE
    return out + b"\0" * (HEADER_SIZE - len(out))


# -----------------------------------------------------------------------------
# Tensor writing

class Writer:
    def __init__(self, f, dtype, group, vision_group=0, format=2):
        self.f, self.dtype, self.group, self.vision_group, self.format = f, dtype, group, vision_group, format
        self.worst = []  # (relative max error, name, type) per quantized tensor
        self.vision = False  # q4 files: True while the vision tower and projector are written (q8)

    def align(self):
        pad = (-self.f.tell()) % ALIGN
        self.f.write(b"\0" * pad)

    def f32(self, arrays):
        """Write one f32 tensor, given as a list of per-layer pieces (stacked in order)."""
        self.align()
        for a in arrays:
            self.f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())

    def f32_matrix(self, a):
        """Write one matmul weight that stays f32 whatever the dtype (the patch embedding), as rows
        (format 1) or panels (format 2)."""
        self.align()
        a = np.ascontiguousarray(a, dtype="<f4")
        self.f.write(panels(panel_words(a, "f32"), 0) if self.format == 2 else a.tobytes())

    def matrix(self, name, arrays, rows=False):
        """Write a stack of (rows, cols) matmul weights in the file's weight dtype (q4 files: q8 for the
        vision tower and projector, with their own group): every matrix's values, then (q8, q4) every
        matrix's scales. Format 1 stores rows; format 2 the kernels' panels (see `panels`), except
        for a table read by rows (rows=True: embed_tokens)."""
        as_panels = self.format == 2 and not rows
        self.align()
        q4 = self.dtype == "q4" and not self.vision
        kind = "q4" if q4 else "q8" if self.dtype == "q4" else self.dtype
        group = self.vision_group if self.dtype == "q4" and not q4 else self.group
        scales, worst = [], 0.0
        for a in arrays:
            s = None
            if kind == "q4":
                data, s = quantize_q4(a, group, name)
                worst = max(worst, rel_error(a, dequantize_q4(data, s, group)))
            elif kind == "q8":
                data, s = quantize_q8(a, group, name)
                err = np.abs(data.astype(np.float32).reshape(s.shape[0], s.shape[1], -1) * s[:, :, None]
                             - a.reshape(s.shape[0], s.shape[1], -1)).max()
                worst = max(worst, float(err / max(np.abs(a).max(), 1e-30)))
                s = s.astype("<f4")
            elif kind == "bf16":
                data = f32_to_bf16(a)
            else:
                data = np.ascontiguousarray(a, dtype="<f4")
            self.f.write(panels(panel_words(data, kind), PANEL_PAD[kind]) if as_panels else data.tobytes())
            if s is not None:
                scales.append(s)
        if scales:
            self.align()
            for s in scales:
                self.f.write(panels(s, 0) if as_panels else s.tobytes())
            self.worst.append((worst, name, kind))


# A zero weight in each type's panel words (padding columns): q8 bytes w + 128, q4 nibbles w + 8.
PANEL_PAD = {"f32": 0, "bf16": 0, "q8": 0x80808080, "q4": 0x88888888}


def panel_words(data, kind):
    """A matrix in the row format (what format 1 stores) as the 32-bit words of matmul.c's panels:
    f32 one input per word; bf16 two (k even in the low half, odd K padded with 0); q8 four bytes
    w + 128 (the u8 operand of vpdpbusd); q4 eight nibbles (q4_words). (rows, words per row)."""
    if kind == "q4":
        return q4_words(data)
    if kind == "q8":
        return (data.astype(np.int16) + 128).astype(np.uint8).view("<u4")
    if kind == "bf16":
        even = np.pad(data, ((0, 0), (0, data.shape[1] % 2))).astype(np.uint32)
        return even[:, 0::2] | even[:, 1::2] << 16
    return data.view("<u4")


def panels(words, pad):
    """Format 2: a (rows, n) array of 32-bit words (or of scales) in matmul.c's panel layout -- columns
    of the matrix (its rows, the output features) in panels of 32, each panel (n, 32) with the 32
    columns innermost, the last one padded with `pad` (a zero weight; scales 0). The bytes, as
    pack_matrix would lay them out in memory."""
    rows, n = words.shape
    n_panels = -(-rows // 32)
    out = np.full((n_panels * 32, n), pad, dtype=words.dtype)
    out[:rows] = words
    return np.ascontiguousarray(out.reshape(n_panels, 32, n).transpose(0, 2, 1)).tobytes()


def q4_words(u):
    """Format 2's q4 words from the row format's nibble pairs u (rows, cols/2): word i of a row holds
    inputs 8i..8i+7, byte j the nibble of 8i+j low and of 8i+4+j high (matmul.c's q4 panels)."""
    rows = u.shape[0]
    nib = np.empty((rows, u.shape[1] * 2), np.uint8)
    nib[:, 0::2], nib[:, 1::2] = u & 0x0F, u >> 4
    nib = nib.reshape(rows, -1, 2, 4)   # (row, word, low/high half, byte)
    return np.ascontiguousarray(nib[:, :, 0, :] | nib[:, :, 1, :] << 4).view("<u4").reshape(rows, -1)


def f32_to_bf16(a):
    """Round to nearest even, as torch's .to(bfloat16) does (NaN kept as NaN)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def quantize_q8(a, group, name):
    """Symmetric int8 with one scale per `group` consecutive inputs: q = round(w / s), s = max|w| / 127.
    An all-zero group gets s = 0 and q = 0 (nothing is divided by zero)."""
    rows, cols = a.shape
    if cols % group:
        die("%s: %d columns are not a multiple of the q8 group size %d (use --group-size)" % (name, cols, group))
    g = a.reshape(rows, cols // group, group)
    amax = np.abs(g).max(axis=2)
    s = (amax / 127.0).astype(np.float32)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    q = np.clip(np.rint(g * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(rows, cols), s


def quantize_q4(a, group, name):
    """4-bit weights with one bf16 scale per `group` consecutive inputs, as llama.cpp's q4_0 picks
    them: in each group the value m of largest magnitude sets s = -m / 8, so m is exactly -8 * s and
    the 16 levels -8..7 all get used (a symmetric -7..7 grid wastes one: its RMS error measured 13%
    higher on N(0, 0.02) weights). s is rounded to bf16 first and q = clip(rint(w / s), -8, 7) uses
    the rounded s, so the scale's rounding only moves the grid. Returns (rows, cols/2) uint8 with
    u = q + 8 of input 2i in the low nibble and of 2i+1 in the high one, and (rows, cols/group)
    bf16 bits. An all-zero group gets s = 0 and u = 8 (nothing is divided by zero)."""
    rows, cols = a.shape
    if cols % group:
        die("%s: %d columns are not a multiple of the q4 group size %d (use --group-size)" % (name, cols, group))
    g = np.asarray(a, dtype=np.float32).reshape(rows, cols // group, group)
    idx = np.abs(g).argmax(axis=2)
    m = np.take_along_axis(g, idx[:, :, None], axis=2)[:, :, 0]
    s_bits = f32_to_bf16(m / np.float32(-8.0))
    s = bf16_to_f32(s_bits)
    inv = np.divide(np.float32(1.0), s, out=np.zeros_like(s), where=s != 0)
    q = np.clip(np.rint(g * inv[:, :, None]), -8, 7).astype(np.int16) + 8
    q = q.reshape(rows, cols).astype(np.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8), s_bits


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def dequantize_q4(u, s_bits, group):
    """The weights a q4 matrix stands for (what llava.c computes with): (u - 8) * scale."""
    rows = u.shape[0]
    q = np.empty((rows, u.shape[1] * 2), np.float32)
    q[:, 0::2] = (u & 0x0F).astype(np.float32) - 8
    q[:, 1::2] = (u >> 4).astype(np.float32) - 8
    s = bf16_to_f32(s_bits)
    return (q.reshape(rows, -1, group) * s[:, :, None]).reshape(rows, -1)


def rel_error(a, d):
    """max |w - dequantized w| / max |w| over a matrix"""
    return float(np.abs(np.asarray(a, np.float32) - d).max() / max(float(np.abs(a).max()), 1e-30))


def write_layers(ck, w, prefix, n_layers, label, parts):
    """Each (part, shape, kind) of `parts` as one tensor stacked over layers 0..n_layers-1, read from
    prefix % layer + part: kind "m" a matmul weight in the file's dtype, "f" f32. A part given as a
    tuple of names (matmul weights) is one matrix whose rows are theirs in turn (format 2's fused
    matrices); `shape` is then a list of their shapes."""
    for part, shape, kind in parts:
        names, shapes = (part, shape) if isinstance(part, tuple) else ((part,), [shape])
        arrays = (np.concatenate([ck.get(prefix % i + n, s) for n, s in zip(names, shapes)]) for i in range(n_layers))
        w.matrix(label + "+".join(names), arrays) if kind == "m" else w.f32(arrays)


def fused(format, parts):
    """Format 2 stores q|k|v and gate|up as one matrix each, the rows the kernels fuse (llava.c's
    fuse_weights does the same at load for format 1): ("a", "b") with their shapes, kind "m"."""
    if format == 1:
        return parts
    return [(tuple(p for p, _, _ in parts), [s for _, s, _ in parts], "m")]


def tensor_plan(ck, h, w):
    """Write every tensor in the documented order. Mirrors `memory_map_weights` in llava.c."""
    D, Dv, Dvh, Lv = h["dim"], h["v_dim"], h["v_hidden_dim"], h["v_layers"]
    C, P = h["n_channels"], h["patch_size"]
    npos = (h["image_size"] // P) ** 2 + 1

    # vision tower (CLIP): embeddings, pre-LN, the encoder layers (stacked), post-LN (unused by LLaVA)
    v = "vision."
    w.vision = True   # q4 files: the vision tower and the projector in q8
    w.f32([ck.get(v + "embeddings.class_embedding", [Dv])])
    w.f32_matrix(ck.get(v + "embeddings.patch_embedding.weight", [Dv, C, P, P]).reshape(Dv, C * P * P))
    w.f32([ck.get(v + "embeddings.position_embedding.weight", [npos, Dv])])
    ck.skip(v + "embeddings.position_ids")
    w.f32([ck.get(v + "pre_layrnorm.weight", [Dv])])
    w.f32([ck.get(v + "pre_layrnorm.bias", [Dv])])
    qkv = [("self_attn.%s_proj.weight" % x, [Dv, Dv], "m") for x in "qkv"]
    qkv_bias = [("self_attn.%s_proj.bias" % x, [Dv], "f") for x in "qkv"]
    # format 1: each projection and its bias in turn; format 2: q|k|v as one matrix, then the biases
    attention = [t for pair in zip(qkv, qkv_bias) for t in pair] if w.format == 1 else fused(2, qkv) + qkv_bias
    write_layers(ck, w, v + "encoder.layers.%d.", Lv, "vision.", [
        ("layer_norm1.weight", [Dv], "f"), ("layer_norm1.bias", [Dv], "f")] + attention + [
        ("self_attn.out_proj.weight", [Dv, Dv], "m"), ("self_attn.out_proj.bias", [Dv], "f"),
        ("layer_norm2.weight", [Dv], "f"), ("layer_norm2.bias", [Dv], "f"),
        ("mlp.fc1.weight", [Dvh, Dv], "m"), ("mlp.fc1.bias", [Dvh], "f"),
        ("mlp.fc2.weight", [Dv, Dvh], "m"), ("mlp.fc2.bias", [Dv], "f")])
    w.f32([ck.get(v + "post_layernorm.weight", [Dv])])
    w.f32([ck.get(v + "post_layernorm.bias", [Dv])])

    # multimodal projector: linear_1 -> gelu -> linear_2 (biases written as zeros if the config has none)
    pb = h["projector_bias"]
    w.matrix("projector.linear_1", [ck.get("projector.linear_1.weight", [D, Dv])])
    w.f32([ck.get("projector.linear_1.bias", [D]) if pb else np.zeros(D, np.float32)])
    w.matrix("projector.linear_2", [ck.get("projector.linear_2.weight", [D, D])])
    w.f32([ck.get("projector.linear_2.bias", [D]) if pb else np.zeros(D, np.float32)])
    w.f32([ck.get("image_newline", [D]) if ck.has("image_newline") else np.zeros(D, np.float32)])

    # language model (Llama)
    w.vision = False
    L, V, F = h["n_layers"], h["vocab_size"], h["hidden_dim"]
    qd, kvd = h["n_heads"] * h["head_dim"], h["n_kv_heads"] * h["head_dim"]
    w.matrix("embed_tokens", [ck.get("lm.embed_tokens.weight", [V, D])], rows=True)   # a lookup table
    write_layers(ck, w, "lm.layers.%d.", L, "", [
        ("input_layernorm.weight", [D], "f")] + fused(w.format, [
        ("self_attn.q_proj.weight", [qd, D], "m"),
        ("self_attn.k_proj.weight", [kvd, D], "m"),
        ("self_attn.v_proj.weight", [kvd, D], "m")]) + [
        ("self_attn.o_proj.weight", [D, qd], "m"),
        ("post_attention_layernorm.weight", [D], "f")] + fused(w.format, [
        ("mlp.gate_proj.weight", [F, D], "m"),
        ("mlp.up_proj.weight", [F, D], "m")]) + [
        ("mlp.down_proj.weight", [D, F], "m")])
    for i in range(L):  # old checkpoints stored the rotary buffer; it is recomputed at run time
        ck.skip("lm.layers.%d.self_attn.rotary_emb.inv_freq" % i)
    w.f32([ck.get("lm.norm.weight", [D])])
    if ck.has("lm_head.weight"):
        w.matrix("lm_head", [ck.get("lm_head.weight", [V, D])])
    elif h["tie_word_embeddings"]:
        ck.used.discard("lm.embed_tokens.weight")  # tied: the same tensor a second time, on purpose
        w.matrix("lm_head", [ck.get("lm.embed_tokens.weight", [V, D])])
    else:
        die("checkpoint has no lm_head.weight and tie_word_embeddings is false")


def export(hf_dir, out_path, dtype, group, source=None, vision_group=Q8_GROUP, format=VERSION):
    """source: where the tensors come from; the checkpoint in hf_dir unless given (bench/make_random_model.py
    passes random weights with the same names and shapes)."""
    h = read_config(hf_dir)
    tokens = load_tokenizer(hf_dir)
    for name in ("bos", "eos", "image_token", "video_token"):
        if not 0 <= h[name] < len(tokens):
            die("%s: %s id %d is not in the tokenizer (%d tokens)" % (hf_dir, name, h[name], len(tokens)))
    if len(tokens) > h["vocab_size"]:
        die("%s: tokenizer has %d tokens but vocab_size is %d" % (hf_dir, len(tokens), h["vocab_size"]))
    blob = tokenizer_blob(tokens)
    ck = source or Checkpoint(hf_dir)
    h.update(magic=MAGIC, version=format, weight_type=DTYPES[dtype], group_size=group if dtype in ("q8", "q4") else 0,
             n_tokens=len(tokens), tokenizer_bytes=len(blob), vision_group_size=vision_group if dtype == "q4" else 0)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(pack_header(h))
        f.write(blob)
        w = Writer(f, dtype, group, vision_group, format)
        tensor_plan(ck, h, w)
        w.align()
        size = f.tell()
    if source is None:
        ck.check_all_used()
    os.replace(tmp, out_path)
    for t, g in (("q8", vision_group if dtype == "q4" else group), ("q4", group)):
        errs = [(e, n) for e, n, tt in w.worst if tt == t]
        if not errs:
            continue
        worst = max(errs)
        print("%s group %d: worst relative quantization error %.3g%% of max|w| (%s)" % (t, g, 100 * worst[0], worst[1]))
        for err, name in sorted(errs, reverse=True)[:5]:
            print("  %-34s max |w - q*s| / max|w| = %.3g%%" % (name, 100 * err))
    print("wrote %s: %.1f MB, %s, %d tokens" % (out_path, size / 1e6, dtype, len(tokens)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("src", help="Hugging Face model directory (or tokenizer.model with --tokenizer-only)")
    ap.add_argument("out", help="output file")
    ap.add_argument("--dtype", choices=list(DTYPES), default="f32", help="weight type of the matmul weights; q4: "
                    "the language model in 4 bits, the vision tower and projector in q8")
    # (argparse %-formats help strings itself: a literal percent sign is %%)
    ap.add_argument("--group-size", type=int, default=None, help="inputs per scale: q8 default {} (8.5 bits per "
                    "weight); q4 default {}, a multiple of {} (4.25 bits per weight with its bf16 scale). Why 64: "
                    "the q4 GEMM (prefill) pays one f32 epilogue per group, so group 32 ran 0.93-1.0x q8's speed "
                    "and group 64 1.04-1.17x (Zen 5, AVX512-VNNI), and 64 streams 6%% fewer bytes per decoded "
                    "token; group 32 has 20%% less RMS error on N(0, 0.02) weights (10.5%% vs 13.1%%, "
                    "test/check_quant.py) for those who prefer accuracy (see README)".format(Q8_GROUP, Q4_GROUP, Q4_GROUP_MULT))
    ap.add_argument("--vision-group-size", type=int, default=Q8_GROUP, help="q4 files: the q8 group of the "
                    "vision tower's and projector's matrices (default %d)" % Q8_GROUP)
    ap.add_argument("--format", type=int, choices=FORMATS, default=VERSION, help="file format: 2 (default) "
                    "stores the matmul weights in the layout llava.c's kernels read, so a load is an mmap; 1 "
                    "stores rows (older llava.c builds read only 1; this one re-packs it at every load)")
    ap.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer blob")
    ap.add_argument("--added-tokens", default="", help="with --tokenizer-only and a tokenizer.model: "
                    "comma-separated tokens to append as special (e.g. '<video>,<image>')")
    args = ap.parse_args()
    if not os.path.exists(args.src):
        die("%s: no such file or directory" % args.src)
    if args.tokenizer_only:
        tokens = load_tokenizer(args.src)
        tokens += [[t.encode("utf-8"), 0.0, SP_USER_DEFINED] for t in args.added_tokens.split(",") if t]
        with open(args.out, "wb") as f:
            f.write(tokenizer_blob(tokens))
        return
    if not os.path.isdir(args.src):
        die("%s: not a directory" % args.src)
    group = args.group_size or (Q4_GROUP if args.dtype == "q4" else Q8_GROUP)
    if group <= 0 or group % 4 or (args.dtype == "q4" and group % Q4_GROUP_MULT):
        die("--group-size must be a positive multiple of %d" % (Q4_GROUP_MULT if args.dtype == "q4" else 4))
    if args.vision_group_size <= 0 or args.vision_group_size % 4:
        die("--vision-group-size must be a positive multiple of 4")
    export(args.src, args.out, args.dtype, group, vision_group=args.vision_group_size, format=args.format)


if __name__ == "__main__":
    main()
