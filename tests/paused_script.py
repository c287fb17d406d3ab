"""Run a Python script that pauses in one function until a signal arrives.

    python paused_script.py MODULE:ATTRIBUTE SCRIPT [ARGS...]

The function that ATTRIBUTE (a dotted path, such as Class.method) names in
MODULE is replaced before the script runs. A call from outside a solve()
prints PAUSED_LINE to stderr and sleeps, so that a test can send SIGINT at
that point. Calls made by a solve(), such as a coffee break's validation,
run the original function. The script runs with the default
SIGINT handler, as default_sigint.script_command runs it.
"""

import importlib
import os
import runpy
import signal
import sys
import time

PAUSED_LINE = "paused for a signal"


def solve_running() -> bool:
    """Return whether a frame of mochac's Solver.solve is on the call stack."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "solve" and code.co_filename.endswith("solver.py"):
            return True
        frame = frame.f_back
    return False


def pause_at(target: str) -> None:
    """Replace the function ``target`` ("module:attribute") by one that pauses."""
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)

    def paused(*args, **kwargs):
        if solve_running():
            return original(*args, **kwargs)
        print(f"{PAUSED_LINE} in {target}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)

    setattr(owner, name, paused)


def main() -> None:
    target, script, *arguments = sys.argv[1:]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pause_at(target)
    sys.argv = [script, *arguments]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
