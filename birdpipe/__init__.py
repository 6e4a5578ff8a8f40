"""birdpipe: the BirdCLEF recipe as a library; `assets/` orchestrates it with Dagster."""
