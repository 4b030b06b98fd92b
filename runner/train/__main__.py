"""Train a LoRA/QLoRA adapter. Run: accelerate launch [--config_file F] -m runner.train CONFIG.json"""

from __future__ import annotations

import sys

from .config import ConfigError, load_config
from .disk import NoSpace
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runner.train CONFIG.json", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args[0])  # unknown keys raise
        from .session import run_session  # heavy imports only once the config is good

        run_session(cfg)  # rank 0 writes; resumes from the newest checkpoint; "stopped" also exits 0
    except ConfigError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NoSpace as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
