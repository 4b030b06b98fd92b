"""Serve a session's fine-tune with the host's vLLM unit: the LoRA adapter or a merged model, health-gated.

The adopted unit is never edited: a drop-in (<unit>.service.d/gpu-runner-serve.conf) resets ExecStart and
writes the whole vLLM command, built from the unit's own command (every file but our drop-in). A new
configuration keeps the previous drop-in (or its absence) until it passes the health gate; otherwise the
previous one is put back, vLLM restarted and health-gated again, and the failure is reported.
What is served is recorded in /etc/gpu-runner/serving.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.host import inference
from runner.host.lock import current_holder

ALLOWED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig accepts only these
SERVE_ROOT = Path("/var/lib/gpu-runner/serve")
RECORD = Path("/etc/gpu-runner/serving.json")
INFERENCE_RECORD = Path("/etc/gpu-runner/inference.json")
DROPIN_NAME = "gpu-runner-serve.conf"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MERGE_MARKER = "gpu-runner-merge.json"
# Fields that must agree for an adapter trained on one copy of a model to fit another copy
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")
COMPLETION_TRIES = 3  # /health is up and the name listed, yet completions fail: a real failure, not a start
# vLLM registers its models before it listens, so once it answers these problems will not go away
FINAL_PROBLEMS = re.compile(r"completion answered|/v1/models lists")


class ServeRefused(Exception):
    """Refused before anything changed (exit 3)."""


class ServeFailed(Exception):
    """The new configuration failed its health gate (exit 1); the message says what and how it was restored."""


# -- the adapter -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Adapter:
    path: Path
    rank: int
    max_lora_rank: int | None  # None: too large to serve unmerged
    base: str  # the model it was trained on, as a host path or HF id
    modules_to_save: tuple[str, ...]


def lora_rank(config: dict) -> int:
    """The largest rank in the adapter: r, and every rank_pattern entry."""
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def max_lora_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank vLLM allows that holds `rank`; None when none does."""
    return next((allowed for allowed in ALLOWED_LORA_RANKS if allowed >= rank), None)


def safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}; raises ValueError for a truncated or garbled file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise ValueError(f"header of {header_len} bytes in a {size}-byte file")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data = size - 8 - header_len
    for name, tensor in header.items():
        if tensor["data_offsets"][1] > data:
            raise ValueError(f"tensor {name} ends past the end of the file")
    return header


def check_safetensors(path: Path) -> dict[str, dict]:
    """The header parses and every tensor lies inside the file; returns the header."""
    try:
        return safetensors_header(path)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as err:
        raise ServeRefused(f"{path} is corrupt ({err}); train again or copy the adapter again") from None


def model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Every weight's shape in a local safetensors model (headers only); {} when it is not local."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []:
        try:
            shapes.update({name: t["shape"] for name, t in safetensors_header(file).items()})
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
            continue
    return shapes


def check_shapes(adapter_weights: Path, served_model: str) -> None:
    """lora_A is [r, in] and lora_B is [out, r] of the served model's [out, in] weight, module by module.

    vLLM loads an adapter whose shapes do not fit and serves it anyway, so this is ours to check.
    """
    base = model_shapes(Path(served_model))
    if not base:
        return
    for name, tensor in safetensors_header(adapter_weights).items():
        for part, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not name.endswith(part):
                continue
            module = name.removeprefix("base_model.model.").removesuffix(part) + ".weight"
            expected = base.get(module)
            if expected is None:
                raise ServeRefused(f"the adapter adapts {module}, which the served model {served_model} does not "
                                   "have: it was trained on another model; serve it with --merge")
            if tensor["shape"][axis] != expected[axis]:
                raise ServeRefused(f"adapter tensor {name} has shape {tensor['shape']} but the served model's "
                                   f"{module} is {expected}: it was trained on another model")


def read_adapter(path: Path, session_dir: Path) -> Adapter:
    """The adapter's config and weights, checked; its base from the session's job (else adapter_config)."""
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise ServeRefused(f"no adapter at {path}: did session {session_dir.name} finish?")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ServeRefused(f"{config_file} is not JSON ({err})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise ServeRefused(f"{path} is a {config['peft_type']} adapter; vLLM serves LoRA adapters only")
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise ServeRefused(f"{path} has no adapter_model.safetensors")
    check_safetensors(weights)
    rank = lora_rank(config)
    return Adapter(path, rank, max_lora_rank(rank), trained_on(session_dir, config),
                   tuple(config.get("modules_to_save") or ()))


def trained_on(session_dir: Path, config: dict) -> str:
    """The base model as the host sees it: the job's model (an uploaded one lives in the session folder)."""
    job_file = session_dir / "job.json"
    if job_file.exists():
        model = json.loads(job_file.read_text()).get("paths", {}).get("model")
        if model:
            local = session_dir / model
            return str(local) if not model.startswith("/") and local.exists() else model
    return str(config.get("base_model_name_or_path") or "")


def job_method(session_dir: Path) -> str:
    job_file = session_dir / "job.json"
    return json.loads(job_file.read_text()).get("spec", {}).get("method", "lora") if job_file.exists() else "lora"


def same_model(a: str, b: str) -> bool:
    """Same path or id, or two local copies whose config.json agrees on every shape."""
    if a == b or (os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)):
        return True
    configs = [Path(m) / "config.json" for m in (a, b)]
    if not all(c.exists() for c in configs):
        return False
    first, second = (json.loads(c.read_text()) for c in configs)
    return all(first.get(k) == second.get(k) for k in SHAPE_KEYS)


def check_unmerged(adapter: Adapter, served_model: str) -> int:
    """Refuse an adapter vLLM cannot serve on this model; returns the --max-lora-rank to use."""
    if adapter.modules_to_save:
        raise ServeRefused(f"the adapter saves whole modules ({', '.join(adapter.modules_to_save)}), which vLLM "
                           "cannot serve unmerged: serve it with --merge")
    if adapter.max_lora_rank is None:
        raise ServeRefused(f"adapter rank {adapter.rank} is above vLLM's largest --max-lora-rank "
                           f"{ALLOWED_LORA_RANKS[-1]}: serve it with --merge")
    if adapter.base and not same_model(adapter.base, served_model):
        raise ServeRefused(f"the adapter was trained on {adapter.base} but vLLM serves {served_model}: "
                           "serve it with --merge, which serves its own base")
    check_shapes(adapter.path / "adapter_model.safetensors", served_model)
    return adapter.max_lora_rank


# -- the vLLM command --------------------------------------------------------------------------------------

def split_command(line: str) -> list[str]:
    """Words of an ExecStart line, quotes kept as written (so $VARS and %specifiers mean what they meant)."""
    words, word, quote = [], "", None
    for char in line:
        if quote:
            word += char
            quote = None if char == quote else quote
        elif char in "\"'":
            word += char
            quote = char
        elif char.isspace():
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    return [*words, word] if word else words


def unit_command(cat_text: str, skip: str = DROPIN_NAME) -> list[str]:
    """The unit's own ExecStart from `systemctl cat` output: every file but `skip`, later ones winning."""
    command: list[str] = []
    skipping = False
    lines = iter(cat_text.splitlines())
    for line in lines:
        if line.startswith("# /"):
            skipping = line.rstrip().endswith("/" + skip)
            continue
        if skipping or not line.strip().startswith("ExecStart="):
            continue
        value = line.strip()[len("ExecStart="):]
        while value.endswith("\\"):  # continuation lines
            value = value[:-1] + " " + next(lines, "").strip()
        command = split_command(value)  # empty resets; our units have one command
    if not command:
        raise ServeRefused("the inference unit has no ExecStart to build on")
    return command


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'" else word


def option_values(command: list[str], flag: str) -> list[str]:
    """The values of FLAG (`--flag v1 v2` or `--flag=v`), unquoted."""
    values = []
    for i, word in enumerate(command):
        if word.startswith(flag + "="):
            values.append(_unquote(word.split("=", 1)[1]))
        elif word == flag:
            for value in command[i + 1:]:
                if value.startswith("-"):
                    break
                values.append(_unquote(value))
    return values


def without_option(command: list[str], flag: str) -> list[str]:
    """COMMAND less FLAG and its values (none for a switch, one or more otherwise)."""
    out, skipping = [], False
    for word in command:
        if skipping and not word.startswith("-"):
            continue
        skipping = word == flag
        if not skipping and not word.startswith(flag + "="):
            out.append(word)
    return out


def model_index(command: list[str]) -> int:
    """Where the model is: after --model, else the first word after `serve`."""
    for i, word in enumerate(command[:-1]):
        if word == "--model":
            return i + 1
    if "serve" in command:
        i = command.index("serve") + 1
        if i < len(command) and not command[i].startswith("-"):
            return i
    raise ServeRefused(f"cannot find the model in the vLLM command: {' '.join(command)}")


def served_model(command: list[str]) -> str:
    return _unquote(command[model_index(command)])


def served_names(command: list[str]) -> list[str]:
    return option_values(command, "--served-model-name") or [served_model(command)]


def with_adapter(command: list[str], name: str, path: Path, rank: int) -> list[str]:
    """The base command plus our adapter; the user's own adapters stay, the rank limit covers both."""
    modules = [m for m in option_values(command, "--lora-modules") if not m.startswith(name + "=")]
    current = [int(r) for r in option_values(command, "--max-lora-rank")]
    bare = command
    for flag in ("--enable-lora", "--lora-modules", "--max-lora-rank"):
        bare = without_option(bare, flag)
    return [*bare, "--enable-lora", "--lora-modules", *modules, f"{name}={path}",
            "--max-lora-rank", str(max([rank, *current]))]


def with_model(command: list[str], path: Path, name: str) -> list[str]:
    """The base command serving the merged model at PATH under NAME."""
    out = list(command)
    out[model_index(out)] = str(path)
    return [*without_option(out, "--served-model-name"), "--served-model-name", name]


def render_dropin(command: list[str], what: str) -> str:
    return ("# Written by 'runner serve'; 'runner serve --revert' removes it. The unit itself is untouched.\n"
            f"# Serves: {what}\n"
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={' '.join(command)}\n")


# -- the unit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    name: str  # vllm.service
    health_url: str
    base_command: list[str]

    @property
    def dropin(self) -> Path:
        return Path(f"/etc/systemd/system/{self.name}.d/{DROPIN_NAME}")

    def current_command(self) -> list[str]:
        """What runs now: the base command, or our drop-in's."""
        return unit_command(self.dropin.read_text(), skip="") if self.dropin.exists() else self.base_command


def read_unit() -> Unit:
    if not INFERENCE_RECORD.exists():
        raise ServeRefused(f"{INFERENCE_RECORD} is missing: run setup with an inference server first")
    record = json.loads(INFERENCE_RECORD.read_text())
    if not record.get("unit"):
        raise ServeRefused("setup recorded no inference server (inference_server_mode none)")
    if not inference.has_systemd():
        raise ServeRefused("this host has no systemd to run the inference unit")
    cat = inference.systemctl("cat", record["unit"])
    if cat.returncode != 0:
        raise ServeRefused(f"systemctl cat {record['unit']} failed: {cat.stderr.strip()}")
    return Unit(record["unit"], record["health_url"], unit_command(cat.stdout))


def unit_state(unit: str) -> dict[str, str]:
    out = inference.systemctl("show", "-p", "ActiveState", "-p", "SubState", "-p", "NRestarts", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_error(unit: str, since: float) -> str:
    """The last error line vLLM logged since SINCE, for the one-line report."""
    out = subprocess.run(["journalctl", "-u", unit, "--since", f"@{int(since)}", "-o", "cat", "--no-pager"],
                         capture_output=True, text=True, timeout=30).stdout
    errors = [line.strip() for line in out.splitlines() if re.search(r"Error|error:|Exception", line)]
    return errors[-1][:300] if errors else "no error in its log"


def restart(unit: str) -> float:
    for args in (("daemon-reload",), ("restart", unit)):
        result = inference.systemctl(*args)
        if result.returncode != 0:
            raise inference.InferenceError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")
    return time.time()


def gate(unit: Unit, names: list[str], timeout_s: float, since: float, poll_s: float = 2) -> float:
    """Wait until every name answers a completion; fail early when vLLM exits or completions keep failing."""
    started = time.monotonic()
    restarts = unit_state(unit.name).get("NRestarts", "0")
    failed_completions = 0
    while True:
        state = unit_state(unit.name)
        exited = state.get("ActiveState") in ("failed", "inactive") or state.get("SubState") == "auto-restart"
        if exited or state.get("NRestarts", "0") != restarts:
            raise inference.InferenceError(f"{unit.name} exited: {journal_error(unit.name, since)}")
        problems = [p for p in (inference.check_health(unit.health_url, n) for n in names) if p]
        if not problems:
            return time.monotonic() - started
        if FINAL_PROBLEMS.search(problems[0]):  # the API is up: its model list and answers are final
            failed_completions += 1
            if failed_completions >= COMPLETION_TRIES:
                raise inference.InferenceError(problems[0])
        if time.monotonic() - started >= timeout_s:
            raise inference.InferenceError(f"not healthy after {timeout_s:g} s: {problems[0]}")
        time.sleep(poll_s)


def _interrupt(signum, frame):  # SSH gone or a stop: roll back like a failed gate
    raise KeyboardInterrupt


ROLLBACK_GATE_S = 600


def switch(unit: Unit, dropin: str | None, names: list[str], previous_names: list[str], timeout_s: float) -> float:
    """Install DROPIN (None: no drop-in), restart, gate NAMES; on failure put the previous one back."""
    previous = unit.dropin.read_text() if unit.dropin.exists() else None
    old_handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        write_dropin(unit.dropin, dropin)
        try:
            return gate(unit, names, timeout_s, restart(unit.name))
        except (inference.InferenceError, KeyboardInterrupt) as err:
            why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
            write_dropin(unit.dropin, previous)
            try:
                # the previous configuration was healthy: give it the full time, whatever the new one had
                took = gate(unit, previous_names, max(timeout_s, ROLLBACK_GATE_S), restart(unit.name))
            except inference.InferenceError as again:
                raise ServeFailed(f"{why}; the previous configuration was put back but is not healthy "
                                  f"either: {again}") from None
            raise ServeFailed(f"{why}; rolled back to the previous configuration "
                              f"({', '.join(previous_names)} healthy again after {took:.0f} s)") from None
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def write_dropin(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


# -- served files -----------------------------------------------------------------------------------------

def publish(tmp: Path, final: Path) -> Path:
    """World-readable (vLLM runs as its own user), then renamed into place; an old copy goes after."""
    for root, dirs, files in os.walk(tmp):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def staging_dir(final: Path) -> Path:
    """An empty temp folder beside FINAL; the folders above are made traversable for vLLM's user."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for folder in (final.parent, *final.parent.parents):
        if not folder.is_relative_to(SERVE_ROOT.parent):
            break
        folder.chmod(folder.stat().st_mode | 0o755)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def copy_adapter(adapter: Path, final: Path) -> Path:
    tmp = staging_dir(final)
    shutil.copytree(adapter, tmp, symlinks=False)
    return publish(tmp, final)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def merge_dtype(base_config: dict, method: str) -> str:
    """The dtype the base is stored in; QLoRA adapters go onto bf16 (never the 4-bit weights)."""
    stored = str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32")
    if method == "qlora" and stored == "float32":
        return "bfloat16"
    return stored if stored in ("float32", "bfloat16", "float16") else "bfloat16"


def check_mergeable(adapter: Adapter, free_disk_b: int | None = None) -> Path:
    """Refuse a base we cannot merge onto (missing, pre-quantized) or one that does not fit on disk."""
    base = Path(adapter.base)
    if not (base / "config.json").exists():
        raise ServeRefused(f"merge needs the base model on this host; {adapter.base or 'none'} is not a local "
                           "model folder")
    config = json.loads((base / "config.json").read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise ServeRefused(f"the base {base} is stored {method}; merging onto quantized weights loses the "
                           "fine-tune: point the job at the unquantized (bf16/fp16) base")
    size_b = sum(f.stat().st_size for f in base.glob("*.safetensors")) or sum(
        f.stat().st_size for f in base.iterdir() if f.is_file())
    SERVE_ROOT.mkdir(parents=True, exist_ok=True)
    free_b = shutil.disk_usage(SERVE_ROOT).free if free_disk_b is None else free_disk_b
    if free_b < size_b * 1.1:
        raise ServeRefused(f"merging needs about {size_b * 1.1 / 2**30:.1f} GiB free under {SERVE_ROOT}; "
                           f"{free_b / 2**30:.1f} GiB are")
    return base


def merge(adapter: Adapter, method: str, final: Path) -> Path:
    """Adapter merged onto the unquantized base on CPU, saved as safetensors (tmp dir, then rename).

    Reuses an earlier merge of the same adapter weights.
    """
    base = check_mergeable(adapter)
    weights_sha = file_sha256(adapter.path / "adapter_model.safetensors")
    marker = final / MERGE_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("adapter_sha256") == weights_sha:
        return final
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = merge_dtype(json.loads((base / "config.json").read_text()), method)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), use_safetensors=True,
                                                 device_map={"": "cpu"})
    merged = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
    tmp = staging_dir(final)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer_from = adapter.path if (adapter.path / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(tmp)
    (tmp / MERGE_MARKER).write_text(json.dumps({"base": str(base), "adapter": str(adapter.path), "dtype": dtype,
                                                "method": method, "adapter_sha256": weights_sha}, indent=1))
    return publish(tmp, final)


# -- commands ---------------------------------------------------------------------------------------------

def read_record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def write_record(record: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    tmp = RECORD.with_name(f".{RECORD.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(RECORD)


def describe(unit: Unit, command: list[str]) -> dict:
    """What COMMAND serves: the model and its names, and the adapters it loads."""
    adapters = [dict(zip(("name", "path"), m.split("=", 1), strict=False))
                for m in option_values(command, "--lora-modules")]
    return {"unit": unit.name, "health_url": unit.health_url, "model": served_model(command),
            "names": served_names(command), "adapters": adapters,
            "max_lora_rank": next(iter(option_values(command, "--max-lora-rank")), None)}


def serving_now(unit: Unit) -> list[str]:
    """The names the current configuration answers to (for the rollback's health gate)."""
    now = describe(unit, unit.current_command())
    return [now["names"][0], *(a["name"] for a in now["adapters"])]


def list_served(check: bool = True) -> dict:
    """`runner serve --list`: what the unit serves now (from its drop-in), our record, and one health probe.
    A host without an inference server answers so (mode none): a listing is not refused."""
    try:
        unit = read_unit()
    except ServeRefused as why:
        return {"mode": "none", "problem": str(why)}
    now = describe(unit, unit.current_command())
    record = read_record()
    now["mode"] = record.get("mode", "base") if unit.dropin.exists() else "base"
    now["session"] = record.get("session") if unit.dropin.exists() else None
    now["since"] = record.get("since")
    now["active"] = inference.is_active(unit.name)
    if check:
        names = serving_now(unit)
        problems = [p for p in (inference.check_health(unit.health_url, n) for n in names) if p]
        now["healthy"] = not problems
        now["problem"] = problems[0] if problems else None
    return now


def serve(training_root: Path, request: dict) -> dict:
    """Serve session REQUEST['session'] as an adapter or merged; health-gated, rolled back on failure."""
    session = str(request["session"])
    mode = request.get("mode", "adapter")
    name = request.get("name") or f"ft-{session}"
    timeout_s = float(request.get("health_timeout_s", 600))
    if not NAME_RE.fullmatch(name):
        raise ServeRefused(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    session_dir = training_root.expanduser() / "sessions" / session
    if not session_dir.is_dir():
        raise ServeRefused(f"no session {session} on this host (looked in {session_dir.parent})")
    holder = current_holder(training_root.expanduser() / "session.lock")
    if holder:
        raise ServeRefused(f"session {holder.get('session_id')} is training on this host; serve after it ends")
    unit = read_unit()
    adapter = read_adapter(session_dir / "output" / "adapter", session_dir)
    base_names = served_names(unit.base_command)
    if name in base_names:
        raise ServeRefused(f"--name {name} is the base model's name; pick another")
    previous_names = serving_now(unit)
    if mode == "adapter":
        rank = check_unmerged(adapter, served_model(unit.base_command))
        path = copy_adapter(adapter.path, SERVE_ROOT / session / "adapter")
        command = with_adapter(unit.base_command, name, path, rank)
        names = [name, base_names[0]]
        extra = {"rank": adapter.rank, "max_lora_rank": rank}
    elif mode == "merge":
        path = merge(adapter, job_method(session_dir), SERVE_ROOT / session / "merged")
        command = with_model(unit.base_command, path, name)
        names = [name]
        extra = {"rank": adapter.rank}
    else:
        raise ServeRefused(f"unknown mode {mode}: adapter or merge")
    try:
        took = switch(unit, render_dropin(command, f"{mode} of session {session} as {name}"), names,
                      previous_names, timeout_s)
    except ServeFailed:
        prune_served(keep={read_record().get("path")} if unit.dropin.exists() else set())
        raise
    record = {"mode": "merged" if mode == "merge" else "adapter", "session": session, "name": name,
              "path": str(path), "base": served_model(unit.base_command), "since": time.time(), **extra}
    write_record(record)
    prune_served(keep={str(path)})
    return {**record, "changed": True, "healthy_after_s": round(took, 1), "unit": unit.name}


def revert(request: dict) -> dict:
    """Back to the unit's own configuration (no drop-in), health-gated; a no-op when already there."""
    unit = read_unit()
    timeout_s = float(request.get("health_timeout_s", 600))
    if not unit.dropin.exists():
        return {"mode": "base", "changed": False, "names": served_names(unit.base_command)}
    names = served_names(unit.base_command)
    took = switch(unit, None, names[:1], serving_now(unit), timeout_s)
    write_record({"mode": "base", "session": None, "name": names[0], "base": served_model(unit.base_command),
                  "since": time.time()})
    prune_served(keep=set())
    return {"mode": "base", "changed": True, "names": names, "healthy_after_s": round(took, 1)}


def prune_served(keep: set[str]) -> None:
    """Remove served copies (<root>/<session>/<adapter|merged>) that are not in KEEP."""
    if not SERVE_ROOT.exists():
        return
    for session in SERVE_ROOT.iterdir():
        for copy in session.iterdir() if session.is_dir() else []:
            if str(copy) not in keep:
                shutil.rmtree(copy, ignore_errors=True)
        if session.is_dir() and not any(session.iterdir()):
            session.rmdir()


def main(training_root: Path, action: str) -> int:
    """`python -m runner.host serve ROOT apply|list|revert` (request JSON on stdin); the last line is the answer."""
    request = json.loads(sys.stdin.read() or "{}") if not sys.stdin.isatty() else {}
    try:
        if action == "list":
            answer = list_served()
        elif action == "revert":
            answer = revert(request)
        elif action == "apply":
            answer = serve(training_root, request)
        else:
            print(f"refused: unknown serve action {action}: apply, list or revert")
            return 3
    except ServeRefused as refusal:
        print(f"refused: {refusal}")
        return 3
    except (ServeFailed, inference.InferenceError) as failure:
        print(f"failed: {failure}")
        return 1
    print(json.dumps(answer))
    return 0
