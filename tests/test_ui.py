"""The Dagster and MLflow UIs as a user meets them, driven in headless Chromium (`make test-ui`).

A tiny dataset is materialized as `make demo` does (tests/ui.toml: 2 folds of 2 epochs, no
BirdNET), then `dagster dev` and `mlflow ui` serve it on 127.0.0.1 and the test walks what a
user does: the graph, a plot on an asset page, a materialization launched from Dagster, a
config change that makes exactly the downstream stages unsynced, and the MLflow run and
registered model that link back to Dagster. Screenshots go to data/ui-screens/.

Ports: $BIRDPIPE_UI_PORTS ("dagster,mlflow"), else two free ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from birdpipe.paths import PROJECT_ROOT

pytestmark = [pytest.mark.ui, pytest.mark.slow]

SCREENS = PROJECT_ROOT / "data" / "ui-screens"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
#: Server start-up and definitions reloads on a busy 2-core machine take tens of seconds.
START_TIMEOUT_S, RUN_TIMEOUT_S = 300, 600
GROUPS = ("ingest", "features", "training", "evaluation", "submission")
#: What `[thresholds]` changes: its own stage and the two that read the thresholds.
UNSYNCED_AFTER_THRESHOLDS = {"thresholds", "submission", "soundscape_validation"}


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make test-ui installs the `ui` dependency group)"
    if not CHROMIUM or not DRIVER:
        return "Debian's chromium and chromium-driver are not installed (make test-ui installs them)"
    return None


@dataclass
class Stack:
    dagster: str
    mlflow: str
    config: Path
    env: dict[str, str]
    #: What `make demo` printed (stdout and Dagster's log on stderr).
    report: str

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.dagster}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            out = json.load(answer)
        assert "errors" not in out, out["errors"]
        return out["data"]

    def metadata(self, asset: str, partition: str | None = None) -> dict[str, str]:
        """The latest materialization's metadata: text, or the URL of url entries."""
        query = """query($key: AssetKeyInput!, $partitions: [String!]) { assetOrError(assetKey: $key) { ... on Asset {
            assetMaterializations(limit: 1, partitions: $partitions) { metadataEntries { label
              ... on UrlMetadataEntry { url } ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } } } } }"""
        found = self.graphql(query, {"key": {"path": [asset]}, "partitions": [partition] if partition else None})
        [event] = found["assetOrError"]["assetMaterializations"]
        return {e["label"]: e.get("url") or e.get("text") or e.get("mdStr") or "" for e in event["metadataEntries"]}


def _free_ports() -> tuple[int, int]:
    if os.environ.get("BIRDPIPE_UI_PORTS"):
        dagster, mlflow = os.environ["BIRDPIPE_UI_PORTS"].split(",")
        return int(dagster), int(mlflow)
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = tuple(s.getsockname()[1] for s in sockets)
    for s in sockets:
        s.close()
    return ports  # type: ignore[return-value]


def _wait(url: str, what: str, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    pytest.fail(f"{what} did not answer {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tiny_dataset: Path, tmp_path_factory) -> Iterator[Stack]:
    if reason := _missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ui")
    dagster_port, mlflow_port = _free_ports()
    dagster, mlflow = f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}"
    config = root / "config.toml"
    config.write_text((Path(__file__).parent / "ui.toml").read_text() + f'ui_url = "{mlflow}"\ndagster_url = "{dagster}"\n')
    (root / "home").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")
    store = f"sqlite:///{root / 'mlflow.db'}"
    env = os.environ | {
        "DAGSTER_HOME": str(root / "home"), "BIRDPIPE_DATA": str(tiny_dataset), "BIRDPIPE_WORK": str(root / "work"),
        "BIRDPIPE_CONFIG": str(config), "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }  # fmt: skip
    demo = subprocess.run([sys.executable, "-m", "assets.demo"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    bin_dir = Path(sys.executable).parent
    servers = {
        "dagster dev": ([str(bin_dir / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(dagster_port)], f"{dagster}/server_info"),
        "mlflow ui": ([str(bin_dir / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                       "--backend-store-uri", store], f"{mlflow}/health"),
    }  # fmt: skip
    procs = []
    try:
        for name, (cmd, _) in servers.items():
            log = root / f"{name.split()[0]}.log"
            procs.append((subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                           start_new_session=True), log))  # fmt: skip
        for (name, (_, url)), (proc, log) in zip(servers.items(), procs):
            _wait(url, name, log, proc)
        stack = Stack(dagster, mlflow, config, env, demo.stdout + demo.stderr)
        stack.graphql("mutation { setNuxSeen }")  # the first visit's newsletter dialog would cover the pages
        yield stack
    finally:
        for proc, _ in procs:  # each server with the processes it started (its own session)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,950"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    SCREENS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver, condition: Callable, what: str, timeout: float = 90):
    """The condition's value once truthy; fails naming `what` and saving a screenshot otherwise."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d):
        try:
            return condition(d)
        except WebDriverException:
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=1).until(safe)
    except Exception:
        driver.save_screenshot(str(SCREENS / "failed.png"))
        pytest.fail(f"{what}: not shown within {timeout} s at {driver.current_url} (see {SCREENS / 'failed.png'})")


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _open_dagster(driver, url: str) -> None:
    driver.get(url)
    _until(driver, lambda d: "Catalog" in _text(d), f"Dagster at {url}")


def _open_mlflow(driver, url: str, shown: Callable, what: str):
    """An MLflow page once `shown`, with its assistant panel closed (it covers a third of the page)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    found = _until(driver, shown, what)
    for button in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()
    return found


def _shot(driver, name: str) -> None:
    time.sleep(1)  # let charts and images finish drawing
    driver.save_screenshot(str(SCREENS / f"{name}.png"))


def _stale(stack: Stack) -> dict[str, str]:
    nodes = stack.graphql("{ assetNodes { assetKey { path } staleStatus } }")["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in nodes}


def test_long_stages_log_progress_with_rate_and_eta(stack: Stack):
    import re

    for line in (r"mel cache: 24/24 recordings \(100%\), [\d.]+ recordings/s, done",
                 r"out-of-fold prediction: \d+/\d+ windows \(100%\), [\d.]+ windows/s, done, fold 1",
                 r"predict: 2/2 files \(100%\), [\d.]+ files/s, done, 10 windows"):  # fmt: skip
        assert re.search(line, stack.report), f"no progress line like {line!r} in the run's log"


def test_the_asset_graph_lists_every_stage(stack: Stack, browser):
    from assets.definitions import build_defs
    from birdpipe.config import load_config

    expected = {k.to_user_string() for k in build_defs(load_config(stack.config)).get_repository_def().asset_graph.get_all_asset_keys()}
    _open_dagster(browser, f"{stack.dagster}/assets")
    _until(browser, lambda d: expected <= set(_text(d).split()), "every asset in the catalog")
    assert set(_stale(stack)) == expected
    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    browser.get(f"{stack.dagster}/asset-groups?expanded={expanded}")
    _until(browser, lambda d: {"mel_cache", "trained_model", "thresholds"} <= set(_text(d).split()), "the expanded lineage graph")
    _shot(browser, "dagster-lineage")


def _show_picture(stack: Stack, driver, asset: str, entry: str, shot: str) -> None:
    """Open an asset's page and the picture of metadata `entry` ("[Show Markdown]"); it must decode."""
    from selenium.webdriver.common.by import By

    _open_dagster(driver, f"{stack.dagster}/assets/{asset}")
    row = _until(driver, lambda d: d.find_element(By.XPATH, f"//*[normalize-space(text())='{entry}']/ancestor::tr"),
                 f"the {entry} metadata row of {asset}")  # fmt: skip
    link = row.find_element(By.XPATH, ".//*[normalize-space(text())='[Show Markdown]']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    image = _until(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[role=dialog] img[src^='data:image/png']"), f"{entry} in its dialog")
    assert int(image.get_attribute("naturalWidth")) > 300, f"{entry}: the image did not decode"
    _shot(driver, shot)


def test_asset_pages_show_their_pictures(stack: Stack, browser):
    _show_picture(stack, browser, "oof_predictions", "per_species_plot", "dagster-asset-plot")
    _show_picture(stack, browser, "mel_cache", "example_windows", "dagster-mel-examples")


def test_a_materialization_launched_through_dagster_succeeds(stack: Stack, browser):
    launch = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
        ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    selector = {"repositoryLocationName": "birdpipe", "repositoryName": "__repository__", "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": ["soundscape_validation"]}], "assetCheckSelection": []}  # fmt: skip
    launched = stack.graphql(launch, {"p": {"selector": selector}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status_query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    deadline, status = time.monotonic() + RUN_TIMEOUT_S, None
    while time.monotonic() < deadline and status not in ("SUCCESS", "FAILURE", "CANCELED"):
        time.sleep(3)
        status = stack.graphql(status_query, {"id": run_id})["runOrError"]["status"]
    assert status == "SUCCESS", f"run {run_id}: {status}"
    _open_dagster(browser, f"{stack.dagster}/runs/{run_id}")
    _until(browser, lambda d: "Success" in _text(d) and "soundscape_validation" in _text(d), "the successful run's page")
    _shot(browser, "dagster-run")


def test_a_config_change_unsyncs_exactly_the_stages_downstream(stack: Stack, browser):
    assert not {k for k, s in _stale(stack).items() if s == "STALE"}, "stale before any change"
    stack.config.write_text(stack.config.read_text() + "\n[thresholds]\nshrink_positives = 7\n")
    reload = """mutation { reloadRepositoryLocation(repositoryLocationName: "birdpipe") { __typename
        ... on WorkspaceLocationEntry { locationOrLoadError { __typename ... on PythonError { message } } } } }"""
    reloaded = stack.graphql(reload)["reloadRepositoryLocation"]
    assert reloaded["locationOrLoadError"]["__typename"] == "RepositoryLocation", reloaded
    assert {k for k, s in _stale(stack).items() if s == "STALE"} == UNSYNCED_AFTER_THRESHOLDS
    # the catalog marks the same three with their changed code version, and no other
    _open_dagster(browser, f"{stack.dagster}/assets")

    assets = set(_stale(stack))

    def flagged(d) -> set[str] | None:
        """The assets whose catalog row (its lines up to the next asset's name) says "Code version"."""
        lines = _text(d).splitlines()
        starts = [i for i, line in enumerate(lines) if line in assets]
        if {lines[i] for i in starts} != assets:
            return None
        ends = starts[1:] + [len(lines)]
        return {lines[i] for i, j in zip(starts, ends) if "Code version" in lines[i:j]}

    assert _until(browser, flagged, "the catalog rows") == UNSYNCED_AFTER_THRESHOLDS
    _shot(browser, "dagster-unsynced")


def test_the_mlflow_run_shows_params_history_inputs_and_the_dagster_link(stack: Stack, browser):
    from selenium.webdriver.common.by import By

    fold = stack.metadata("trained_model", "0")
    assert fold["mlflow_run"] in stack.report, "make demo prints the run's link"
    _open_mlflow(browser, fold["mlflow_run"], lambda d: "train.model.backbone" in _text(d), "the run's parameters")
    text = _text(browser)
    assert "test_efficientnet" in text and "mel-cache-train" in text, "params and dataset inputs"
    back = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"a[href^='{stack.dagster}/runs/']"), "the link to the Dagster run")
    dagster_run = back.get_attribute("href")
    assert "Made by Dagster run" in text
    _shot(browser, "mlflow-run")
    run_id = fold["mlflow_run_id"]
    with urllib.request.urlopen(f"{stack.mlflow}/ajax-api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=val_score") as r:
        assert [m["step"] for m in json.load(r)["metrics"]] == [0, 1], "one val_score per epoch"
    _open_mlflow(browser, fold["mlflow_run"].replace("?", "/model-metrics?"),
                 lambda d: "val_score" in _text(d) and d.find_elements(By.CSS_SELECTOR, "svg.main-svg"), "the metric charts")  # fmt: skip
    _shot(browser, "mlflow-metrics")
    # one click back: the Dagster run that trained this fold
    _open_dagster(browser, dagster_run)
    _until(browser, lambda d: "trained_model" in _text(d), "the Dagster run of the fold")


def test_the_registered_model_shows_its_alias_and_what_made_it(stack: Stack, browser):
    fold = stack.metadata("trained_model", "1")
    _open_mlflow(browser, fold["registered_model_version"], lambda d: "candidate" in _text(d), "the version's aliases")
    name = fold["registered_model"].split("/")[1]
    _open_mlflow(browser, f"{stack.mlflow}/#/models/{name}?workflowType=machine_learning",
                 lambda d: "@ candidate" in _text(d) and "git commit" in _text(d), "the model's aliases and description")  # fmt: skip
    _shot(browser, "mlflow-model")
