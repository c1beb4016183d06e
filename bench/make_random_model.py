"""
make_random_model.py: a llava.c model file with the exact shapes of LLaVA-NeXT-Video-7B and random
weights, for speed measurements without downloading 14 GB.

    python3 bench/make_random_model.py OUT.bin [--dtype q8|q4|bf16|f32] [--group-size N]

It writes a config.json with the values of the hub's llava-hf/LLaVA-NeXT-Video-7B-hf (listed in
doc/model.md#checkpoint-and-config; the keys the hub file leaves out take transformers' defaults in
export.py, as for the real checkpoint) and runs export.py's own writer over random N(0, 0.02) tensors,
so the file layout is exactly what the real checkpoint exports to. Needs numpy; a 7B q8 file takes a few minutes and ~7.5 GB of disk
(q4: ~4.2 GB, its vision tower and projector in q8 with export.py's default group).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export  # noqa: E402

CONFIG_7B = {
    "model_type": "llava_next_video",
    "image_token_index": 32001,
    "video_token_index": 32000,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "spatial_pool_mode": "average",
    "spatial_pool_stride": 2,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                      "projection_dim": 768, "vocab_size": 32000, "model_type": "clip_vision_model"},
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "model_type": "llama",
                    "max_position_embeddings": 4096, "pad_token_id": 0, "rms_norm_eps": 1e-05,
                    "vocab_size": 32064, "rope_scaling": {"factor": 2.5, "type": "linear"}},
}


class RandomSource:
    """Stands in for export.Checkpoint: every tensor it is asked for, of the shape asked for."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def has(self, name):
        return True

    def skip(self, name):
        pass

    def get(self, name, shape):
        if name.endswith("norm.weight") or "layernorm" in name or "layer_norm" in name:
            return np.ones(shape, np.float32) if name.endswith("weight") else np.zeros(shape, np.float32)
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=list(export.DTYPES), default="q8")
    ap.add_argument("--group-size", type=int, default=None, help="export.py's default for the dtype if not given")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(CONFIG_7B, f)
        with open(os.path.join(d, "added_tokens.json"), "w") as f:
            json.dump({"<image>": 32001, "<video>": 32000}, f)
        shutil.copy(os.path.join(here, "..", "test", "data", "tokenizer.model"), d)
        group = args.group_size or (export.Q4_GROUP if args.dtype == "q4" else export.Q8_GROUP)
        export.export(d, args.out, args.dtype, group, source=RandomSource())


if __name__ == "__main__":
    main()
