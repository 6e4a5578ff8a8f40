"""`bench/bench_gpu.py --device cpu --quick`: the GPU benchmark's code runs on CPU, so it cannot rot
before the next GPU is at hand."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_writes_every_rate(tmp_path, capsys):
    out = tmp_path / "bench.json"
    _load_bench().main(["--device", "cpu", "--quick", "--workers", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"device", "device_name", "torch", "workers", "configs", "birdnet", "targets", "wall_seconds"} <= set(result)
    (config,) = result["configs"]
    assert {"backbone", "batch", "model_only", "loader", "waveform", "inference_windows_per_s", "peak_memory_mb"} <= set(config)
    for path in ("model_only", "loader", "waveform"):
        assert config[path]["samples_per_s"] > 0 and config[path]["samples"] > 0
        assert 0 <= config[path]["wait_share"] <= 1
    assert config["inference_windows_per_s"] > 0 and result["cache_audio_s_per_s"] > 0
    assert result["birdnet"].get("chunks_per_s", 1) > 0 and ("chunks_per_s" in result["birdnet"] or "skipped" in result["birdnet"])
    assert "model only" in capsys.readouterr().out
