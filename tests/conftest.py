"""Shared test setup: make the helper modules in tests/ importable, and keep
the "mochac" logger's settings from leaking between tests."""

import logging
import sys
from pathlib import Path

import pytest

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture(autouse=True)
def _restore_mochac_logger():
    """Put the "mochac" logger's level and handlers back after each test.

    Example scripts called in-process (their main()) and doc blocks call
    log_to_console(), which sets that level, and a level left at INFO would
    hide the DEBUG records that a later test's caplog expects.
    """
    mochac_logger = logging.getLogger("mochac")
    level, handlers = mochac_logger.level, list(mochac_logger.handlers)
    yield
    mochac_logger.setLevel(level)
    for handler in list(mochac_logger.handlers):
        if handler not in handlers:
            mochac_logger.removeHandler(handler)
