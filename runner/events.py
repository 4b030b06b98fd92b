"""What ansible-runner's events carry for the CLI: a host's answer, found by its tag (runner.host.answers).

Which task printed it is never asked, so renaming a task changes nothing the CLI reads. Imports no Ansible.
"""

from __future__ import annotations

from runner.host import answers


def tagged_answer(event: dict, kinds: tuple[str, ...], events: tuple[str, ...] = ("runner_on_ok",),
                  ) -> tuple[str, dict] | None:
    """(host, payload) when EVENT, one of EVENTS, carries a host's answer tagged with one of KINDS: a line of its
    command's stdout, or a debug task's msg; None for any other event."""
    data = event.get("event_data", {})
    if event.get("event") not in events or not data.get("host"):
        return None
    res = data.get("res") or {}
    found = answers.tagged(res.get("msg"), kinds)
    if found is None and isinstance(res.get("stdout"), str):
        found = answers.find(res["stdout"], kinds)
    return (data["host"], found) if found is not None else None
