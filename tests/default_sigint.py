"""A command prefix that runs a Python script with the default SIGINT handler.

A shell that starts jobs in the background makes them ignore SIGINT, and a
child process inherits that. Tests that send a Ctrl-C to an example script
run it through this prefix, in place of a preexec_fn, which is unsafe in a
process with threads.
"""

import signal
import subprocess
import sys
from pathlib import Path

# Runs the script named by its first argument, as `python SCRIPT ARGS` would.
RUN_WITH_DEFAULT_SIGINT = (
    "import os, runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; "
    "sys.path[0] = os.path.dirname(sys.argv[0]); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)

# Runs a script that pauses in one function until a signal arrives.
PAUSED_SCRIPT = Path(__file__).with_name("paused_script.py")


def script_command(script) -> list[str]:
    """Return the command that runs ``script`` with the default SIGINT handler."""
    return [sys.executable, "-c", RUN_WITH_DEFAULT_SIGINT, str(script)]


def paused_script_command(target: str, script) -> list[str]:
    """Return the command that runs ``script`` with the default SIGINT handler
    and pauses it in the function ``target`` ("module:attribute"), as
    paused_script.py describes."""
    return [sys.executable, str(PAUSED_SCRIPT), target, str(script)]


def interrupt_at_line(
    command, marker: str, timeout: float = 120, signum: int = signal.SIGINT
) -> tuple[int, str]:
    """Run ``command``, send it ``signum`` (SIGINT by default) once its
    stderr shows a line containing ``marker``, and return its exit status
    and whole stderr. Fails the test when the command ends without that
    line, because then no signal was sent."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    rest = process.communicate(timeout=timeout)[1]
    stderr = "".join(lines) + rest
    assert any(marker in line for line in lines), (
        f"the command ended without printing {marker!r}, so it got no "
        f"{signal.Signals(signum).name}; its stderr:\n{stderr}"
    )
    return process.returncode, stderr
