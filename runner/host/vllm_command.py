"""The vLLM command of the inference unit: read from the unit's files, changed to serve an adapter or a merged
model, and written back only as our drop-in (the adopted unit is never edited)."""

from __future__ import annotations

from pathlib import Path

from runner.host.serve_errors import ServeRefused

DROPIN_NAME = "gpu-runner-serve.conf"


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
