from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REAL_DATA = TESTS.parent.parent / "shared" / "data" / "xc-puerto-rico"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic BirdCLEF-layout dataset, generated once per test session."""
    from birdpipe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny-birdclef")
    generate_dataset(
        root,
        SynthConfig(
            n_species=4, recordings_per_species=6, recording_seconds=9.0, n_soundscapes=2,
            soundscape_seconds=23.0, n_unlabeled=1, seed=0,
        ),
    )
    return root


@pytest.fixture
def real_dataset() -> Path:
    if not (REAL_DATA / "train_metadata.csv").is_file():
        pytest.skip(f"real recordings not found at {REAL_DATA} (../shared/data/xc-puerto-rico)")
    return REAL_DATA
