"""birdpipe's Dagster code location: thin assets over the `birdpipe` library."""
