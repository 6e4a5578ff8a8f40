"""birdpipe's Dagster code location: thin assets over the `birdpipe` library."""

import warnings

import dagster as dg

# Data versions (`Output(data_version=...)`) are what make a changed recording mark the cache
# and everything after it unsynced; the API is marked beta, and we rely on it knowingly.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
