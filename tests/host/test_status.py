"""status.json is written by the supervisor's main thread and its telemetry thread at once."""

import json
import threading

from runner.host.status import Status


def test_concurrent_writers_never_fail_and_leave_a_whole_file(tmp_path):
    status = Status(tmp_path)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(150):
                status.warn(f"writer {n} warning {i}")
                status.append("losses", [i, 1.0 / (i + 1)])
                status.update(**{f"field_{n}": i})
        except BaseException as err:  # any failure of a writer fails the test
            errors.append(err)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not errors
    data = json.loads((tmp_path / "status.json").read_text())
    assert len(data["warnings"]) == 450 and len(data["losses"]) == 450
    assert not list(tmp_path.glob(".status.json.*"))  # no temp file left behind
