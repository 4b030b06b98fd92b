"""The CLI shows the trainer's out-of-memory recoveries (out_of_memory events the supervisor keeps), once each."""

import io

from rich.console import Console

from runner.progress import Progress

EVENT = {
    "event": "out_of_memory",
    "step": 7,
    "before": {"forward_rows": 4},
    "after": {"forward_rows": 2},
    "message": "out of GPU memory at step 8: continuing with {'forward_rows': 2} (the same step again)",
}


def test_each_out_of_memory_recovery_is_printed_once():
    out = io.StringIO()
    progress = Progress(["gpu1"], Console(file=out, width=200))
    status = {"trainer_out_of_memory": [EVENT]}
    progress.update("gpu1", status)
    progress.update("gpu1", status)
    second = {**EVENT, "message": "out of GPU memory at step 9: continuing with {'gradient_checkpointing': True}"}
    progress.update("gpu1", {"trainer_out_of_memory": [EVENT, second]})
    lines = [line for line in out.getvalue().splitlines() if "warning" in line]
    assert lines == [f"gpu1  warning: {EVENT['message']}", f"gpu1  warning: {second['message']}"]
