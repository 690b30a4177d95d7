"""Everything the command line does is importable from ``fercurate``, and each name means one thing."""

from __future__ import annotations

import subprocess
import sys


def test_every_public_name_resolves_and_train_is_the_package() -> None:
    probe = ("import fercurate, types\n"
             "missing = [name for name in fercurate.__all__ if getattr(fercurate, name, None) is None]\n"
             "import fercurate.train.runs  # importing the package must not change what the name means\n"
             "print(missing, isinstance(fercurate.train, types.ModuleType), callable(fercurate.train_classifier))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] True True"


def test_names_are_loaded_lazily() -> None:
    probe = "import sys, fercurate; print('torch' in sys.modules, 'fiftyone' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"
