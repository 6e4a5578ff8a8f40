"""Shared storage: asset values written by one process are read by the next through an object
store (`[deploy] io_root`), here an S3-compatible server (moto's server mode) started in the test."""

import dagster as dg
import polars as pl
import pytest

from assets.definitions import build_defs
from assets.resources import Dataset, Tracking
from test_pipeline import CONFIG


@pytest.fixture
def s3(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="birdpipe")
    yield client
    server.stop()


def test_asset_values_go_through_an_s3_server(tiny_dataset, tmp_path, s3):
    config = CONFIG.replace(deploy={"io_root": "s3://birdpipe/io"})
    defs = build_defs(config, {
        "dataset": Dataset(root=str(tiny_dataset), work_root=str(tmp_path / "work")),
        "tracking": Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    })  # fmt: skip
    ingest = ["taxonomy", "train_metadata", "audio_manifest"]
    with dg.DagsterInstance.ephemeral() as instance:
        # three runs, as three workers would: each reads its inputs from the bucket, not from memory
        for key in ingest:
            job = defs.resolve_implicit_global_asset_job_def()
            assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(key)]).success
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="birdpipe", Prefix="io/")["Contents"]}
    work = Dataset(root=str(tiny_dataset)).work.root.name
    assert keys == {f"io/{work}/dagster_io/{k}" for k in ingest}
    assert not (tmp_path / "work" / work / "dagster_io").exists()  # nothing on the local disk
    import pickle

    frame = pickle.loads(s3.get_object(Bucket="birdpipe", Key=f"io/{work}/dagster_io/audio_manifest")["Body"].read())
    assert isinstance(frame, pl.DataFrame) and frame["readable"].all() and frame.height == 24
