"""Notebook runs (``pytest --nbmake colab``): each kernel sees one CPU device, as on Colab.

``tests/conftest.py`` gives the test process 8 virtual CPU devices, and a notebook's kernel
inherits that environment. A notebook is written for one accelerator (``09_sharding`` asks for
its 8 devices itself), so while a notebook runs its kernel is started without the flag.
"""

import os
import re

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Runs one notebook with the virtual-device count removed from ``XLA_FLAGS``."""
    saved = os.environ.get("XLA_FLAGS")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", saved or "")
    os.environ["XLA_FLAGS"] = " ".join(flags.split())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = saved
