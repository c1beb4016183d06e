#!/usr/bin/env python3
"""Golden for llava.c's chat mode: a three-turn conversation on the tiny_b model, by transformers.

Run from anywhere, after test/make_goldens.py has written test/models/tiny_b:
    python3 test/make_chat_goldens.py
It writes test/goldens/chat_tiny_b/ (meta.json, chat_ids.npy), deterministically.

The conversation, in the checkpoint's chat template (a system message, then user turns, each answer
appended as the model generated it):
    Be brief. USER: <video>\\n<q1> ASSISTANT:<a1> USER: <q2> ASSISTANT:<a2> USER: <image>\\n<q3> ASSISTANT:<a3>
Each turn is tokenized on its own by the processor (placeholders expanded; BOS only before the first),
appended to the ids of the conversation so far, and transformers' greedy generate continues the WHOLE
sequence from scratch (pixel values of every medium seen so far passed along). That is what llava.c
must reproduce from its KV cache, turn after turn: chat_ids.npy holds the ids of the entire
conversation (prompts and answers, no end token). Answers stop at EOS or after NEW_TOKENS tokens.

Only test/data and test/models are read; nothing outside the repository.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (the clips, photos and margin check of the other goldens)

MODEL = "tiny_b"
SYSTEM = "Be brief."
CLIP, N_FRAMES = "city_320x240_444_2f", 2
PHOTO = "chelsea_451x300"
NEW_TOKENS = 6
# (question, medium): the video comes with the first question (-v on the command line), the image
# with the third (/image in the chat). Several question sets are tried, in order, until every greedy
# step has a clear winner (the same margin rule as the other goldens), so that float rounding in a
# port cannot flip a token.
QUESTION_SETS = [
    ["What happens in this video?", "And after that?", "Describe this picture."],
    ["What is in the video?", "Why?", "What does the photo show?"],
    ["Tell me about the clip.", "Anything else?", "And this image?"],
]


def turn_text(question, first, video=False, image=False):
    media = ("<image>\n" if image else "") + ("<video>\n" if video else "")
    return (SYSTEM + " " if first else "") + "USER: " + media + question + " ASSISTANT:"


def conversation(model, proc, questions):
    frames_all = mg.load_frames(CLIP)
    total = frames_all.shape[0]
    idx_np = np.arange(0, total, total / N_FRAMES).astype(int)
    frames = frames_all[[i for i in range(total) if i in idx_np]]
    photo = mg.open_photo(PHOTO)
    ids = torch.zeros((1, 0), dtype=torch.long)
    media = {}
    margins, turns = [], []
    for k, q in enumerate(questions):
        kw = {}
        if k == 0:
            kw["videos"] = frames
        if k == 2:
            kw["images"] = photo
        text = turn_text(q, k == 0, video=k == 0, image=k == 2)
        enc = proc(text=text, return_tensors="pt", add_special_tokens=(k == 0), **kw)
        for key in ("pixel_values_videos", "pixel_values", "image_sizes"):
            if key in enc:
                media[key] = enc[key]
        ids = torch.cat([ids, enc["input_ids"]], dim=1)
        inputs = dict(media, input_ids=ids, attention_mask=torch.ones_like(ids))
        with torch.no_grad():
            new, step_logits = mg.greedy(model, inputs, NEW_TOKENS)
        new = new.tolist()
        if 2 in new:  # the end token closes the answer and is not part of the conversation
            new = new[: new.index(2)]
            step_logits = step_logits[: len(new) + 1]
        margins.append(mg.margins_of(step_logits))
        turns.append({"question": q, "prompt_tokens": int(enc["input_ids"].shape[1]), "answer_ids": new,
                      "answer_text": proc.tokenizer.decode(new, skip_special_tokens=True)})
        ids = torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)
    return ids[0].numpy().astype(np.int32), turns, margins


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    path = os.path.join(mg.MODELS, MODEL)
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(path)
    for questions in QUESTION_SETS:
        ids, turns, margins = conversation(model, proc, questions)
        ratio = min(m / s for turn in margins for m, s in turn)
        mg.log(f"questions {questions}: {len(ids)} ids, min greedy margin {ratio:.4f} x std")
        if ratio > mg.MARGIN_REL:
            break
    else:
        sys.exit("make_chat_goldens.py: no question set has clear greedy margins")
    out = os.path.join(mg.GOLDENS, "chat_" + MODEL)
    mg.reset_dir(out)
    mg.save_npy(os.path.join(out, "chat_ids.npy"), ids)
    meta = {"model": MODEL, "system": SYSTEM, "clip": CLIP, "num_frames": N_FRAMES, "image": mg.PHOTOS[PHOTO],
            "new_tokens": NEW_TOKENS, "turns": turns, "min_margin_over_std": ratio,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    mg.save_json(os.path.join(out, "meta.json"), meta)
    mg.log(f"wrote {out}: {len(ids)} ids")


if __name__ == "__main__":
    main()
