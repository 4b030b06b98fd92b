"""Build a tiny chat model and tokenizer locally (no model hub needed).

Run: python examples/make_tiny_model.py OUT_DIR

A byte-level BPE tokenizer with a chat template, trained on the demo data plus generated
sentences, and a randomly initialised Llama small enough to train on a CPU in seconds. Its
head_dim is 64 because vLLM's CPU attention kernel rejects smaller heads.
"""

import json
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DEMO_DATA = Path(__file__).parent / "data" / "demo.jsonl"


def corpus_lines(rng: random.Random) -> list[str]:
    """The demo conversations plus random sentences, so the BPE learns useful merges."""
    lines = []
    for row in DEMO_DATA.read_text(encoding="utf-8").splitlines():
        lines.extend(m["content"] for m in json.loads(row)["messages"])
    words = sorted({w.strip("?.:") for line in lines for w in line.split()})
    lines += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    return lines


def build_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(rng), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:])
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    tok = build_tokenizer(random.Random(0))
    model = build_model(tok)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # whole model or nothing: a half-written folder never looks usable
    print(f"tiny model ({sum(p.numel() for p in model.parameters()):,} params) at {out}")


if __name__ == "__main__":
    main(sys.argv[1])
