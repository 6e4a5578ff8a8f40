"""The code location loads light: `dagster dev` and every definitions reload import only Dagster,
polars and the config, never the heavy libraries the stages use (they are imported inside the
functions that need them)."""

import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "onnxruntime", "mlflow", "sklearn", "librosa", "matplotlib", "scipy", "pandas")


def test_loading_the_definitions_imports_no_heavy_library():
    probe = "import sys, assets.definitions; print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"loading assets.definitions imported {out.stdout.strip()}"
