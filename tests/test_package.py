"""finetune/__init__.py: the library notices it silences are filtered before any stage imports the library."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Records, when bitsandbytes is first imported, whether the filter on its CPU-ops logger is already there: the notice
# is logged once, at that import (on CPUs with AVX512-BF16, as CI's), so a filter added later misses it.
SPY = """
import importlib, logging, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "bitsandbytes":
            seen.append(bool(logging.getLogger("bitsandbytes.backends.cpu.ops").filters))
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
print(seen)
"""


@pytest.mark.parametrize("stage", ["train_qlora", "evaluate", "export"])
def test_the_bitsandbytes_notice_filter_is_in_place_before_a_stage_imports_it(stage):
    proc = subprocess.run([sys.executable, "-c", SPY, f"stages.{stage}"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[True]"
