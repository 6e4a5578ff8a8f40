"""Celery settings of the workers (`celery -A dagster_celery.app worker`), found on $PYTHONPATH.

The broker and result backend are the Redis that configs/deploy/cluster.py starts; the executor
(assets/deploy.py) reads the same $BIRDPIPE_CELERY_BROKER, so runs and workers always meet.
"""

import os

broker_url = os.environ["BIRDPIPE_CELERY_BROKER"]
result_backend = broker_url
task_default_queue = "default"
#: A worker takes one step at a time: a fold training must not sit behind a queued step.
worker_prefetch_multiplier = 1
