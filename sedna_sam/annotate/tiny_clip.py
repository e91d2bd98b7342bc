"""A tiny CLIP with random weights and its own small BPE vocabulary, for tests and offline demos.

:func:`build_tiny_clip` saves it in the ``save_pretrained`` layout (no hub download), so it
loads through :func:`sedna_sam.annotate.clip.load_clip` like a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sedna_sam.annotate.clip import DEFAULT_TEMPLATES


def _tiny_vocabulary(words: Sequence[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (CLIP's scheme: ``</w>`` ends a word) learned from prompts over ``words``.

    Any text still tokenizes (every byte is in the base alphabet); words in the corpus
    become single tokens.
    """
    import json

    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    raw = Tokenizer(BPE(end_of_word_suffix="</w>", continuing_subword_prefix="", unk_token=specials[1]))
    raw.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    raw.train_from_iterator([t.format(w) for w in words for t in DEFAULT_TEMPLATES], trainer=trainer)
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges  # type: ignore[return-value]


def build_tiny_clip(
    out_dir: str | Path,
    words: Sequence[str] | None = None,
    seed: int = 0,
    image_size: int = 32,
    hidden: int = 32,
    vocab_size: int = 800,
) -> Path:
    """Save a CLIP with random weights and tiny dims to ``out_dir`` (``save_pretrained``
    layout: config, weights, tokenizer, image processor), loadable by :func:`load_clip`.

    Its similarities are meaningless; it exists so every code path that loads and runs a
    real CLIP runs offline in seconds. The vocabulary is learned from ``words`` (default:
    the Cityscapes and ADE20K class names).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from sedna_sam.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES

    words = list(words) if words is not None else [n for n, _ in CITYSCAPES_CLASSES] + ADE20K_CLASSES
    vocab, merges = _tiny_vocabulary(words, vocab_size)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=max(1, image_size // 4),
        ),
        projection_dim=hidden // 2,
    )
    model = CLIPModel(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out_dir)
    return out_dir
