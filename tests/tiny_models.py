"""Tiny, randomly initialised CLIP/SC-CLIP models and a tiny CLIP tokenizer, made offline for the tests."""

import contextlib
import copy
import string

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from modeling_scclip.configuration_scclip import SCCLIPConfig


# A 12-layer vision tower with 64-wide heads, as the spec's layer indices need, but narrow and on 8-pixel patches so
# that a 64-pixel window (8x8 = 64 patches) runs in milliseconds.
TINY_VISION = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=12,
    num_attention_heads=2,
    patch_size=8,
    image_size=64,
)
TINY_SCCLIP = dict(slide_crop_size=64, slide_stride=32, lof_n_neighbors=8)
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=1,
    max_position_embeddings=77,
)
PROJECTION_DIM = 32
# The end-to-end tests run on every device this machine has: CPU in CI, CPU and CUDA on a GPU machine.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on_device(model, device: str):
    """`model` on `device`; a copy off the CPU, so that a shared fixture stays where the other tests expect it."""
    return model if device == "cpu" else copy.deepcopy(model).to(device)


def full_float32(device: str):
    """cuDNN's default TF32 convolutions (the patch embedding) off, so that CUDA is held to float32 tolerances."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if device == "cuda" else contextlib.nullcontext()


def tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over a byte-level vocabulary of lowercase letters, digits and punctuation."""
    symbols = list(string.ascii_lowercase + string.digits + ".,;:'!?-()/&")
    vocab = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "o f</w>", "p h", "ph o", "pho t", "phot o</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(merge.split()) for merge in merges])


def tiny_clip_config(tokenizer: CLIPTokenizer | None = None) -> CLIPConfig:
    tokenizer = tokenizer or tiny_tokenizer()
    text = dict(
        TINY_TEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=PROJECTION_DIM)


def tiny_clip_model(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config()).eval()


def tiny_scclip_config(**overrides) -> SCCLIPConfig:
    clip_config = tiny_clip_config()
    values = dict(TINY_VISION, **TINY_SCCLIP)
    values.update(overrides)
    return SCCLIPConfig(text_config=clip_config.text_config.to_dict(), projection_dim=PROJECTION_DIM, **values)


def save_tiny_clip(folder, seed: int = 0) -> str:
    """Save a tiny CLIPModel with its tokenizer and image processor, as a Hub CLIP repository looks, to `folder`."""
    tiny_clip_model(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)
