"""Family parity: for each verified family the trainer trains on the model's own function.

A tiny random model of each family is saved to disk with a locally built tokenizer and loaded through the
trainer's own loader (model.load_training_model, what run_session calls). The trainer's loss on one packed
micro-batch of examples of different lengths (some longer than the sliding window), and its LoRA gradients,
must equal the model's own forward on each example alone (eager attention, the model's own head with its
logit scaling and soft-capping), cross-entropy summed over the same trained tokens.

CPU (fp32): within 1e-5 relative, for the path the trainer picks on CPU (auto) and for varlen (the CPU
twin of the CUDA fast path, with its sliding-window handling). GPU (marked gpu; run with
`pytest -m gpu tests/train/test_families.py -p no:provisioning -p no:hosts.plugin`): the CUDA fast path in
bf16 against the same fp32 reference, within a bound set from the bf16 noise floor (see GPU_BOUND).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from runner.train.config import ConfigError, LoraSettings, parse_config
from runner.train.data import IGNORE, Example
from runner.train.families import FAMILIES, varlen_limits
from runner.train.model import load_training_model, prepare_model
from runner.train.packing import collate_packed, shifted_targets

WINDOW = 8  # shorter than most examples below, so sliding-window layers matter
LENGTHS = (13, 5, 21, 9, 30)  # one packed micro-batch of 78 tokens
COMMON = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 128,
    "initializer_range": 0.2,  # large enough that soft-caps, scales and windows change the result
    "tie_word_embeddings": False,
}
# What makes each family differ from Llama, switched on so that a path ignoring it fails
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": WINDOW},
    "mixtral": {"sliding_window": WINDOW, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    "qwen3": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24},
    "gemma": {},
    "gemma2": {
        "sliding_window": WINDOW,
        "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 3.0,
        "query_pre_attn_scalar": 8,
    },
    "gemma3_text": {
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 3.0,
        "query_pre_attn_scalar": 8,
    },
    "phi3": {"sliding_window": WINDOW},
    "olmo2": {},
    "granite": {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5},
    "cohere": {"logit_scale": 0.25},
    "starcoder2": {"sliding_window": WINDOW},
    "glm4": {},
}
UNVERIFIED = "phi"  # not in families.FAMILIES: the model's own attention and head, with a warning
CPU_RTOL = 1e-5


def test_every_verified_family_is_in_the_suite():
    assert set(FAMILY_CONFIGS) == set(FAMILIES)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    """The demo's locally built BPE tokenizer (examples/make_tiny_model.py)."""
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, tokenizer):
    """A folder on disk per model_type: random weights (safetensors) and the tokenizer."""
    folders: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in folders:
            extra = FAMILY_CONFIGS.get(model_type, {})
            ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": 1, "eos_token_id": 2}
            config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **{**COMMON, **extra})
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            folder = tmp_path_factory.mktemp(model_type)
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            folders[model_type] = folder
        return folders[model_type]

    return make


def make_examples(vocab: int) -> list[Example]:
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        prompt = n // 4  # no loss on the prompt
        examples.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


def trainer_config(folder: Path, attention: str, lora_dropout: float = 0.0):
    return parse_config(
        {
            "model": str(folder),
            "dataset": "unused.jsonl",
            "output_dir": "unused",
            "lora": {"rank": 4, "alpha": 8, "dropout": lora_dropout},
            "train": {"attention": attention},
        }
    )


def randomize_lora_b(model: torch.nn.Module) -> None:
    """LoRA B starts at zero, which leaves every A gradient zero: make every adapter matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def trainer_loss_and_grads(folder: Path, attention: str, device: torch.device, precision: str):
    """The trainer's loss on one packed micro-batch, through its own loader and loss module."""
    loss_model, features = load_training_model(trainer_config(folder, attention), precision, device)
    randomize_lora_b(loss_model)
    examples = make_examples(loss_model.model.get_input_embeddings().num_embeddings)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_packed(examples).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_model(**batch)
    loss.backward()
    lora = {n: p.detach() for n, p in loss_model.model.named_parameters() if "lora_" in n}
    return loss.detach().float(), lora_grads(loss_model.model), lora, examples, features, loss_model


def reference_loss_and_grads(folder: Path, lora: dict, examples: list[Example], device, dtype=torch.float32):
    """The model's own forward on each example alone: eager attention, its own head (bf16: under autocast)."""
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    model = prepare_model(base.to(device), LoraSettings(rank=4, alpha=8, dropout=0.0), _plain())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(lora[name])
    model.train()
    total = torch.zeros((), device=device)
    for example in examples:
        ids = torch.tensor([example.input_ids], device=device)
        targets = torch.tensor(shifted_targets(example), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model.get_base_model()(input_ids=ids, use_cache=False).logits[0]
        total = total + torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    total.backward()
    return total.detach(), lora_grads(model)


def _plain():
    from runner.train.model import Features

    return Features(attention="eager", liger=False, compile=False, packing=True)


def relative_errors(loss, grads, ref_loss, ref_grads) -> tuple[float, float]:
    """(loss error, largest per-parameter gradient error), each relative to the reference."""
    assert grads.keys() == ref_grads.keys()
    loss_err = float((loss - ref_loss).abs() / ref_loss.abs())
    grad_err = max(float((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()) for n in grads)
    return loss_err, grad_err


def assert_all_grads_nonzero(grads: dict[str, torch.Tensor]) -> None:
    zero = [n for n, g in grads.items() if not g.abs().sum() > 0]
    assert not zero, f"LoRA parameters without gradient: {zero[:4]}"


@pytest.mark.parametrize("attention", ["auto", "varlen"])
@pytest.mark.parametrize("model_type", [*FAMILY_CONFIGS, UNVERIFIED])
def test_trainer_loss_and_grads_equal_the_models_own_on_cpu(family_folder, model_type, attention):
    folder = family_folder(model_type)
    cpu = torch.device("cpu")
    if attention == "varlen" and varlen_limits(AutoConfig.from_pretrained(folder), window_kernel=True):
        with pytest.raises(ConfigError, match=r"train\.attention varlen cannot train this model"):
            load_training_model(trainer_config(folder, attention), "no", cpu)
        return
    loss, grads, lora, examples, features, loss_model = trainer_loss_and_grads(folder, attention, cpu, "no")
    ref_loss, ref_grads = reference_loss_and_grads(folder, lora, examples, cpu)
    assert_all_grads_nonzero(ref_grads)
    loss_err, grad_err = relative_errors(loss, grads, ref_loss, ref_grads)
    assert loss_err < CPU_RTOL and grad_err < CPU_RTOL, (features, loss_err, grad_err)
    if model_type == UNVERIFIED:
        assert features.warning and "not among the verified families" in features.warning
        assert loss_model.path_info()["head"] == "model"
    else:
        assert features.warning is None and loss_model.path_info()["head"] == "fused"


def test_gemma2_trains_on_cpu_with_its_own_attention_and_says_why(family_folder):
    """Gemma 2 refuses sdpa and caps its attention scores: auto picks its own (eager) attention."""
    folder = family_folder("gemma2")
    loss_model, features = load_training_model(trainer_config(folder, "auto"), "no", torch.device("cpu"))
    assert features.attention == "eager" and "the model's own attention" in features.attention_reason
    assert loss_model.path_info() == {"head": "fused", "head_reason": "fused head and cross-entropy (soft-capped at 3)"}


def test_explicit_sdpa_on_gemma2_is_one_clear_line(family_folder):
    folder = family_folder("gemma2")
    with pytest.raises(ConfigError, match=r"train\.attention sdpa cannot cap attention scores as gemma2") as err:
        load_training_model(trainer_config(folder, "sdpa"), "no", torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_a_fast_path_never_skips_a_window_or_a_cap_silently(family_folder):
    """On a device whose varlen kernel takes no window, windowed families fall back to their own attention."""
    from runner.train.families import choose_attention

    mistral = AutoConfig.from_pretrained(family_folder("mistral"))
    gemma2 = AutoConfig.from_pretrained(family_folder("gemma2"))
    llama = AutoConfig.from_pretrained(family_folder("llama"))
    no_window = choose_attention(mistral, "auto", "varlen", packing=True, window_kernel=False)
    assert no_window.implementation is None and "sliding_window 8" in no_window.reason
    windowed = choose_attention(mistral, "auto", "varlen", packing=True, window_kernel=True)
    assert windowed.implementation == "varlen" and "sliding_window 8" in windowed.reason
    capped = choose_attention(gemma2, "auto", "varlen", packing=True, window_kernel=True)
    assert capped.implementation == "eager" and "attn_logit_softcapping 2.0" in capped.reason
    dropout = choose_attention(replace_config(llama, attention_dropout=0.1), "auto", "varlen", True, True)
    assert dropout.implementation is None and "attention_dropout is 0.1" in dropout.reason


@pytest.mark.parametrize("extra", [{"softcap": 2.0}, {"dropout": 0.1}])
def test_varlen_refuses_math_it_cannot_do_rather_than_skip_it(extra):
    """Should a model reach varlen anyway, a cap or dropout is an error, never silently left out."""
    from runner.train.attention import varlen_attention_forward

    q = k = v = torch.randn(1, 2, 6, 8)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="varlen attention"):
        varlen_attention_forward(None, q, k, v, None, scaling=0.35, cu_seq_lens_q=cu, **extra)


def replace_config(config, **changes):
    data = {**config.to_dict(), **changes}
    return type(config).from_dict(data)


def test_start_event_says_which_paths_train_gemma2(family_folder, tmp_path, metrics):
    """The session on a Gemma 2 folder (sdpa refused before): trains, and the start event names the paths."""
    from runner.train.session import run_session

    cfg = trainer_config(family_folder("gemma2"), "auto")
    demo = Path(__file__).resolve().parents[2] / "examples" / "data" / "demo.jsonl"
    cfg = replace(
        cfg,
        dataset=str(demo),
        output_dir=str(tmp_path / "output"),
        metrics_path=str(tmp_path / "metrics.jsonl"),
        train=replace(cfg.train, max_steps=2, batch_size=1, max_seq_len=64, save_steps=10),
    )
    assert run_session(cfg).status == "done"
    start = metrics()[0]
    assert start["attention"] == "eager" and "the model's own attention" in start["attention_reason"]
    assert start["head"] == "fused" and "soft-capped at 3" in start["head_reason"]
    assert start["family_warning"] is None
    shown = progress_output({"phase": "train", "trainer": start})
    assert shown.count("gpu1  trainer: attention eager (the model's own attention") == 1
    assert "head fused (fused head and cross-entropy (soft-capped at 3))" in shown


def progress_output(status: dict) -> str:
    """What the CLI's progress prints for a host whose status carries the trainer's start event (twice)."""
    import io

    from rich.console import Console

    from runner.progress import Progress

    out = io.StringIO()
    progress = Progress(["gpu1"], console=Console(file=out, width=400))
    progress.update("gpu1", status)
    progress.update("gpu1", status)
    return out.getvalue()


def test_progress_warns_about_an_unverified_family(family_folder):
    loss_model, features = load_training_model(
        trainer_config(family_folder(UNVERIFIED), "auto"), "no", torch.device("cpu")
    )
    start = {
        "attention": features.attention,
        "attention_reason": features.attention_reason,
        **loss_model.path_info(),
        "family_warning": features.warning,
    }
    shown = progress_output({"trainer": start})
    assert "gpu1  trainer: attention sdpa (the model's own attention: model_type phi is not verified)" in shown
    assert "gpu1  warning: model_type phi is not among the verified families" in shown


# --- CUDA: the fast path in bf16 -------------------------------------------------------------------------

# The trainer's bf16 error against the fp32 reference may be at most GPU_NOISE_FACTOR times the bf16 noise
# floor, measured in the same run for each family: the error of the model's own eager forward with bf16
# weights under autocast, per example, against the same reference. Plus GPU_FLOOR, for a loss whose noise
# happens to be tiny. Measured on an H200 (torch 2.11, transformers 5.17): llama noise 6.7e-5 (loss) and
# 4.3e-2 (largest per-parameter gradient error), the fast path 1.5e-5 and 3.9e-2; over all families the
# fast path reached 2.7e-4 (loss) and 1.26x its family's noise (gradients, granite 8.6e-2 vs 6.8e-2). A path
# that drops Gemma 2's attention cap lands at 4.6e-3 and 1.08 (33x the noise).
GPU_NOISE_FACTOR = 3.0
GPU_FLOOR = 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("model_type", list(FAMILY_CONFIGS))
def test_trainer_loss_and_grads_equal_the_models_own_on_cuda(family_folder, model_type):
    folder = family_folder(model_type)
    cuda = torch.device("cuda")
    loss, grads, lora, examples, features, _ = trainer_loss_and_grads(folder, "auto", cuda, "bf16")
    ref_loss, ref_grads = reference_loss_and_grads(folder, lora, examples, cuda)
    bf16_loss, bf16_grads = reference_loss_and_grads(folder, lora, examples, cuda, torch.bfloat16)
    err = relative_errors(loss, grads, ref_loss, ref_grads)
    noise = relative_errors(bf16_loss, bf16_grads, ref_loss, ref_grads)
    print(f"\n{model_type}: {features.attention} ({features.attention_reason}) error {err} bf16 noise {noise}")
    assert_all_grads_nonzero(ref_grads)
    for ours, floor in zip(err, noise, strict=True):
        assert ours <= GPU_NOISE_FACTOR * floor + GPU_FLOOR, (model_type, features, err, noise)
