#!/usr/bin/env python3
"""
Writes the Hugging Face tokenizer goldens that test/test_tokenizer.c compares tokenizer.c against.

    python3 test/make_tokenizer_goldens.py        (from the repository root; no network needed)

The reference is the HF tokenizer of LLaVA-NeXT-Video-7B rebuilt offline from test/data/tokenizer.model
(the Llama-2 SentencePiece model, which Vicuna-7B v1.5 and so this model use) with the settings of the
hub's tokenizer_config.json (doc/model.md#tokenizer): legacy=False, add_prefix_space=True, add_bos_token=True, plus the
two added tokens <video> = 32000 and <image> = 32001 (special=True, normalized=False). Its BPE merges are
ranked by piece score, as in the hub's tokenizer.json (see build_hf_tokenizers for why that matters).

Outputs (JSON lines; the first line of each is a JSON object with the library versions):
  test/goldens/tokenizer_hf.jsonl
      hand-picked prompts: {"name", "text_utf8_hex", "ids" (encode, with BOS), "decoded_hex"}
      (decoded = decode(ids, skip_special_tokens=True)), then decode-only cases {"name", "ids", "decoded_hex"}
      (padded-vocab ids 32002..32063, byte tokens that form invalid or partial UTF-8, ...).
  test/goldens/tokenizer_hf_sp_texts.jsonl
      every valid-UTF-8 text of the sentencepiece case files in test/data/, run through the HF tokenizer:
      {"case_id", "text_utf8_hex", "ids" (with BOS), "decoded_hex"}. HF and plain sentencepiece differ
      on some of them (text starting with a space or U+2581, "<s>" inside text), which is the point.
  Rows where transformers 5.x's own rebuild from tokenizer.model (merges ranked by id) gives other ids also
  carry those as "ids_merges_by_id" (not used by the C test; they document the difference).
"""
import json
import os
import shutil
import sys
import tempfile

import tokenizers
import transformers
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import AddedToken, AutoTokenizer
try:
    from transformers.tokenization_utils_base import generate_merges  # 5.x
except ImportError:
    from transformers.convert_slow_tokenizer import generate_merges  # 4.x

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "test", "data")
GOLD = os.path.join(ROOT, "test", "goldens")


CONFIG = {  # the keys of the hub's tokenizer_config.json that matter here (doc/model.md#tokenizer)
    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
    "add_prefix_space": True, "legacy": False, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": "<unk>", "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False, "model_max_length": 4096,
}


def load_dir(files):
    """AutoTokenizer.from_pretrained on a temp dir holding `files` (name -> source path or JSON object)."""
    tmp = tempfile.mkdtemp()
    for name, src in files.items():
        if isinstance(src, str):
            shutil.copy(src, os.path.join(tmp, name))
        else:
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(src, f)
    # from_slow=True: 4.x LlamaTokenizerFast rebuilds from tokenizer.model when add_prefix_space is set
    # (LlamaConverter in convert_slow_tokenizer.py, Metaspace prepend_scheme "first"; doc/model.md#tokenizer).
    tok = AutoTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=True, from_slow="tokenizer.json" not in files)
    shutil.rmtree(tmp)
    tok.add_tokens([AddedToken("<video>", special=True, normalized=False),
                    AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    assert tok.convert_tokens_to_ids(["<video>", "<image>"]) == [32000, 32001]
    assert tok.encode("USER: <video>\nHi") == [1, 3148, 1001, 29901, 29871, 32000, 13, 18567]
    return tok


def build_hf_tokenizers():
    """Returns (hub, by_id).

    by_id: built from tokenizer.model alone. transformers 5.x then derives the BPE merges from the vocabulary and
    ranks them by the id of the merged piece (generate_merges(vocab) in tokenization_utils_base.py).
    hub: the same tokenizer with the merges ranked by piece score, as 4.x's LlamaConverter wrote them into the
    tokenizer.json that the hub repo ships (and that 5.x loads as is), and as sentencepiece merges. The two differ
    only where a run of spaces meets other text: the whitespace pieces "▁▁", "▁▁▁", ... have the lowest score
    (-1e9) but small ids (259, 1678, ...). E.g. "\t  ** x": hub [29871, 12, 29871, 3579, 921] (▁ ▁**), by_id
    [29871, 12, 259, 1068, 921] (▁▁ **). The llama.cpp vectors in test/data, made by HF's fast tokenizer from
    the Llama-2 hub tokenizer.json, follow the score order. tokenizer.c follows the hub (score) order."""
    model = os.path.join(DATA, "tokenizer.model")
    by_id = load_dir({"tokenizer.model": model, "tokenizer_config.json": CONFIG})
    backend = json.loads(by_id.backend_tokenizer.to_str())
    proto = sp_pb2.ModelProto()
    with open(model, "rb") as f:
        proto.ParseFromString(f.read())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    assert backend["model"]["vocab"] == vocab
    backend["model"]["merges"] = [list(m) for m in generate_merges(vocab, [(p.piece, p.score) for p in proto.pieces])]
    backend["added_tokens"] = [t for t in backend["added_tokens"] if t["id"] < 32000]  # re-added by load_dir
    hub = load_dir({"tokenizer.json": backend, "tokenizer_config.json": CONFIG})
    assert hub.encode("\t  ** x") == [1, 29871, 12, 29871, 3579, 921]
    return hub, by_id


# Prompts: chat template forms (doc/model.md#prompt-and-chat-template), text glued to special tokens,
# special-token strings inside text, partial matches, whitespace at the edges, control characters, scripts,
# emoji, digits.
PROMPTS = [
    ("template_video", "USER: <video>\nWhy is this video funny? ASSISTANT:"),
    ("template_image", "USER: <image>\nWhat is shown in this image? ASSISTANT:"),
    ("docstring_image_nospace", "USER:<image>\nWhat is shown in this image? ASSISTANT:"),
    ("template_system", "You are a helpful assistant. USER: <video>\nDescribe the video. ASSISTANT:"),
    ("template_image_video", "USER: <image>\n<video>\nCompare the picture and the clip. ASSISTANT:"),
    ("template_two_images", "USER: <image>\n<image>\nWhich one is brighter? ASSISTANT:"),
    ("template_multi_turn", "USER: <video>\nWhat happens? ASSISTANT: A cat jumps. USER: Why? ASSISTANT:"),
    ("template_answer_eos", "USER: <video>\nHi ASSISTANT: Hello!</s>USER: Bye ASSISTANT:"),
    ("brief_example", "USER: <video>\nHi"),
    ("text_after_video", "<video>Hello"),
    ("space_after_video", "<video> Hello"),
    ("two_spaces_after_video", "<video>  Hello"),
    ("newline_after_image", "<image>\n"),
    ("bos_eos_in_text", "Hello <s> world</s> again"),
    ("bos_eos_glued", "<s>Hello</s>"),
    ("lone_eos", "</s>"),
    ("lone_bos", "<s>"),
    ("lone_unk", "<unk>"),
    ("lone_video", "<video>"),
    ("lone_image", "<image>"),
    ("adjacent_videos", "<video><video>"),
    ("adjacent_mixed", "<video><image><video>"),
    ("spaced_specials", "<s> <s>  <s>"),
    ("partial_vid", "<vid"),
    ("partial_video", "a <video b <videos> c"),
    ("nested_angle", "<<video>>"),
    ("partial_eos", "</s </ s> <s"),
    ("empty", ""),
    ("one_space", " "),
    ("two_spaces", "  "),
    ("leading_space", " Hello world"),
    ("leading_trailing_spaces", "  Hello world  "),
    ("trailing_space", "Hello world "),
    ("space_before_video", " <video>"),
    ("space_after_lone_video", "<video> "),
    ("spaces_around_video", "   leading <video>   trailing   "),
    ("newline", "\n"),
    ("newlines", "\n\nHello\n"),
    ("crlf_tab", "line1\nline2\r\n\tTabbed\t end"),
    ("u2581_in_text", "\u2581Hello \u2581\u2581world"),
    ("latin_greek_cyrillic_cjk", "Héllo wörld, ça va? Ελληνικά Русский 日本語 한국어 中文"),
    ("emoji", "emoji 😀👍🏽👨‍👩‍👧 🇺🇸 keycap 1️⃣ done"),
    ("digits", "Digits 1234567890 3.14159 -42 1e10 007"),
    ("astral", "𠀀 ext-B and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"),
    ("nul_and_controls", "text\x00with nul\x07bell\x1b[0m"),
    ("fullwidth", "ＵＳＥＲ： full-width"),
    ("odd_spaces", "\u00a0nbsp \u200bzwsp \ufeffbom \u3000ideographic"),
    ("combining", "e\u0301 vs \u00e9"),
    ("code", "int main(void) {\n    return 0;\n}\n"),
]

# Decode-only cases. Byte piece "<0xNN>" has id NN + 3.
B = lambda *bs: [b + 3 for b in bs]
DECODES = [
    ("padded_vocab_ids", [32002, 15043, 32063, 3186, 32010]),
    ("specials_only", [0, 1, 2, 32000, 32001]),
    ("bos_hello_eos", [1, 15043, 2]),
    ("bytes_valid_cjk", B(0xE4, 0xBD, 0xA0)),
    ("bytes_truncated", B(0xE4, 0xBD)),
    ("bytes_valid_then_truncated", B(0xE4, 0xBD, 0xA0, 0xE4)),
    ("bytes_truncated_then_valid", B(0xE4, 0xE4, 0xBD, 0xA0)),
    ("bytes_split_by_special", [29871] + B(0xE4) + [32000] + B(0xBD, 0xA0)),
    ("bytes_split_by_piece", [15043] + B(0xC3) + [29871] + B(0xA9)),
    ("bytes_emoji", B(0xF0, 0x9F, 0x98, 0x80)),
    ("bytes_lone_ff", B(0xFF)),
    ("bytes_lone_continuation", B(0x80, 0xBF)),
    ("bytes_surrogate", B(0xED, 0xA0, 0x80)),
    ("bytes_overlong", B(0xC0, 0x80)),
    ("bytes_above_max", B(0xF4, 0x90, 0x80, 0x80)),
    ("bytes_u2581_stays", B(0xE2, 0x96, 0x81) + [15043]),
    ("byte_space_first", B(0x20) + [15043]),
    ("byte_newline_first", B(0x0A) + [15043]),
    ("two_leading_spaces", [259, 15043]),
    ("lone_prefix", [29871]),
    ("replacement_piece", [30140, 26308]),
    ("unk_in_middle", [15043, 0, 3186]),
    ("video_run_then_text", [1, 3148, 1001, 29901, 29871] + [32000] * 8 + [13, 18567]),
]


def main():
    hub, by_id = build_hf_tokenizers()
    versions = {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                             "python": sys.version.split()[0]},
                "tokenizer": "test/data/tokenizer.model as the hub's tokenizer.json (merges ranked by score), "
                             "legacy=False, add_prefix_space=True, + <video>=32000 <image>=32001 special "
                             "normalized=False; ids_merges_by_id (only where different): the same built from "
                             "tokenizer.model alone by transformers 5.x (merges ranked by id)",
                "decode": "decode(ids, skip_special_tokens=True)"}
    dec = lambda ids: hub.decode(ids, skip_special_tokens=True).encode("utf-8").hex()

    def encode_case(text, **fields):
        ids = hub.encode(text)
        row = dict(fields, text_utf8_hex=text.encode("utf-8").hex(), ids=ids, decoded_hex=dec(ids))
        other = by_id.encode(text)
        if other != ids:
            row["ids_merges_by_id"] = other
        return row

    os.makedirs(GOLD, exist_ok=True)
    n_diff = 0
    with open(os.path.join(GOLD, "tokenizer_hf.jsonl"), "w") as f:
        f.write(json.dumps(versions) + "\n")
        for name, text in PROMPTS:
            row = encode_case(text, name=name)
            n_diff += "ids_merges_by_id" in row
            f.write(json.dumps(row) + "\n")
        for name, ids in DECODES:
            f.write(json.dumps({"name": name, "ids": ids, "decoded_hex": dec(ids)}) + "\n")
    n_sp = 0
    with open(os.path.join(GOLD, "tokenizer_hf_sp_texts.jsonl"), "w") as f:
        f.write(json.dumps(versions) + "\n")
        for fname in ["tokenizer_cases.jsonl", "ggml-vocab-llama-spm.cases.jsonl"]:
            with open(os.path.join(DATA, fname), encoding="utf-8") as cases:
                for line in cases:
                    case = json.loads(line)
                    row = encode_case(case["text"], case_id=case["case_id"])
                    n_diff += "ids_merges_by_id" in row
                    f.write(json.dumps(row) + "\n")
                    n_sp += 1
    print(f"wrote {len(PROMPTS)} prompts + {len(DECODES)} decode cases, and {n_sp} sentencepiece texts, to {GOLD}; "
          f"{n_diff} texts tokenize differently with merges ranked by id")


if __name__ == "__main__":
    main()
