"""gpu-runner: provision GPU boxes and run safe fine-tuning sessions on them."""

__version__ = "0.1.0"
