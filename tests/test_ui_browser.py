"""`tunelab ui` in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium).

The app runs as its own process on a free loopback port, over run directories these tests make: a short
smollm2-135m LoRA run on DialogSum (a real model, so the playground streams real text), a comparison of two
methods on a tiny encoder, a blind rating sheet generated from the smollm2 run, and a tiny run that is still
training. A person's walk through the pages is replayed: runs, a run, compare, playground, rating; what the pages
show is checked against the files and the database behind them. Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tunelab.eval import human
from tunelab.runs import RunDir

from helpers import SHARED_DATA, cli, session_home, tiny_run_settings, write_yaml
from serving import free_port, short_lora_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT = 120
"""Seconds a page may take to show what is awaited (loading a model in the playground takes several)."""

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    message = "Debian's chromium and chromium-driver are not installed (make test installs them when run as root)"
    if os.environ.get("TUNELAB_REQUIRE_BROWSER"):
        raise RuntimeError(f"{message}; CI needs them")
    pytest.skip(message, allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: without a browser there is nothing to drive)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def _tiny_config(folder: Path, tiny_encoder: str, name: str, **training) -> Path:
    """A tiny encoder on the first 400 SST-2 sentences: a real dataset, seconds of training."""
    sst2 = SHARED_DATA / "sst2"
    data = {"test": str(sst2 / "test.jsonl"), "max_train_examples": 400, "max_eval_examples": 32}
    settings = tiny_run_settings(
        "classification", tiny_encoder, sst2 / "train.jsonl", name=name, data=data, **{"batch_size": 8, **training}
    )
    return write_yaml(folder / f"{name}.yaml", settings)


@contextmanager
def _ui_server(workspace: Path, home: Path):
    """`tunelab ui` over the workspace's runs and comparisons, on a free port; yields its address."""
    port = free_port()
    log = (workspace / "ui.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "ui", "--runs", "runs", "--runs", "compare", "--port", str(port)],
        cwd=workspace,
        env={**os.environ, "TUNELAB_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (workspace / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "tunelab ui did not answer /health in 120 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_encoder):
    """The workspace's runs, comparison and sheet, and the app serving them: (address, workspace, home)."""
    workspace = tmp_path_factory.mktemp("ui-workspace")
    home = session_home(tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(home))
        summarise = short_lora_run(workspace / "runs", SHARED_DATA / "dialogsum", seed=0, name="summarise")
        config = _tiny_config(workspace, tiny_encoder, "tiny-sst2", max_steps=4)
        assert cli(f"compare {config} --methods head,lora --output-dir {workspace / 'compare'}") == 0
        human.export_sheet(summarise, None, 2, workspace / "ui-sheet.csv")
        with _ui_server(workspace, home) as url:
            yield url, workspace, summarise


def _browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser():
    drivers = []

    def opened():
        drivers.append(_browser())
        return drivers[-1]

    yield opened
    for driver in drivers:
        driver.quit()


def shot(driver, name: str) -> None:
    """A full-height screenshot of the page, kept as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height + 40, 600), 4000))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


# What Chromium says when a page load lands inside one call that reads an element: the document it belonged to is
# gone ("does not belong to the document"), or the inspector lost the page under the call ("unhandled inspector
# error", seen in CI while a form submission was loading its answer).
MID_LOAD_ERRORS = ("does not belong to the document", "unhandled inspector error")


def _replaced_mid_check(error: WebDriverException) -> bool:
    """Whether `error` only says a page load replaced the document while an element was being read: Selenium's
    stale element, or one of Chromium's MID_LOAD_ERRORS."""
    stale = (NoSuchElementException, StaleElementReferenceException)
    return isinstance(error, stale) or any(text in str(error) for text in MID_LOAD_ERRORS)


def wait(driver, condition, seconds: float = WAIT):
    """Until `condition` holds; a check that a page load interrupted is made again on the new page."""

    def holds(d):
        try:
            return condition(d)
        except WebDriverException as error:
            if _replaced_mid_check(error):
                return False
            raise

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(holds)


def click_and_load(driver, element) -> None:
    """Click `element`, which submits a form or follows a link, and wait until the next page has replaced this one,
    so that nothing after it reads the old page."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def old_page_gone(_driver) -> bool:
        try:
            old_page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if any(text in str(error) for text in MID_LOAD_ERRORS):
                return False  # the load is under way: ask again once it has landed
            raise
        return False

    WebDriverWait(driver, WAIT, poll_frequency=0.2).until(old_page_gone)


def points(driver, curve: str) -> int:
    found = driver.find_elements(By.ID, f"curve-{curve}")
    return int(found[0].get_attribute("data-points")) if found else 0


def chat(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/serve/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read())


def test_walk_from_the_runs_to_a_run_a_comparison_and_the_playground(app, browser):
    url, workspace, summarise = app
    driver = browser()
    driver.get(f"{url}/runs")
    rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert len(rows) == 3  # the smollm2 run and the comparison's two variants
    header = driver.find_element(By.XPATH, "//th[text()='trainable %']")
    header.click()
    header.click()  # again: descending
    shares = [float(r.text) for r in driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody td:nth-child(9)")]
    assert shares == sorted(shares, reverse=True) and len(set(shares)) == 3
    shot(driver, "1-runs")

    click_and_load(driver, driver.find_element(By.LINK_TEXT, summarise.path.name))
    wait(driver, lambda d: points(d, "loss") > 0)
    logged = [json.loads(line) for line in summarise.metrics_path.read_text().splitlines()]
    assert points(driver, "loss") == sum("loss" in entry for entry in logged)
    evaluation = driver.find_element(By.ID, "evaluation").text
    (task,) = json.loads(summarise.eval_path.read_text())["tasks"].values()
    tuned = task["tuned"]["metrics"]["rougeL"]
    assert "rougeL" in evaluation and f"{tuned['value']:.2f} [{tuned['low']:.2f}, {tuned['high']:.2f}]" in evaluation
    assert "Model card" in driver.page_source and driver.find_element(By.ID, "run-state").text == "complete"
    shot(driver, "2-run")

    click_and_load(driver, driver.find_element(By.ID, "nav-compare"))
    click_and_load(driver, driver.find_element(By.LINK_TEXT, "tiny-sst2"))
    plot = driver.find_element(By.ID, "summary-plot")
    wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0)
    summary = driver.find_element(By.ID, "summary").text
    assert "| head |" not in summary and "head" in summary and "lora" in summary  # a rendered table, not Markdown
    shot(driver, "3-compare")
    variant_links = driver.find_elements(By.CSS_SELECTOR, "#variant-runs a")
    assert len(variant_links) == 2

    driver.get(f"{url}/run/{summarise.path.relative_to(workspace).as_posix()}")
    click_and_load(driver, driver.find_element(By.ID, "try-run"))
    wait(driver, lambda d: not d.find_element(By.ID, "playground-ask").get_attribute("hidden"))
    columns = driver.find_elements(By.CSS_SELECTOR, ".answer")
    assert [c.find_element(By.TAG_NAME, "h3").text for c in columns] == [
        "base: smollm2-135m-instruct",
        f"tuned: runs/{summarise.path.name}",
    ]
    dialogue = "#Person1#: Shall we move the meeting to Friday?\n#Person2#: Yes, Friday at ten works for me."
    driver.find_element(By.ID, "field-dialogue").send_keys(dialogue)
    driver.find_element(By.ID, "max-tokens").clear()
    driver.find_element(By.ID, "max-tokens").send_keys("24")
    driver.find_element(By.ID, "send").click()
    wait(
        driver,
        lambda d: all(c.get_attribute("data-done") == "yes" for c in d.find_elements(By.CSS_SELECTOR, ".answer")),
    )
    shot(driver, "4-playground")
    for column in driver.find_elements(By.CSS_SELECTOR, ".answer"):
        model = column.get_attribute("data-model")
        shown = column.find_element(By.CSS_SELECTOR, ".output")
        assert "error" not in shown.get_attribute("class"), shown.text
        # Greedy decoding: the streamed text the page assembled equals the API's whole answer to the same record.
        whole = chat(url, {"model": model, "record": {"dialogue": dialogue}, "messages": [], "max_tokens": 24})
        assert shown.get_attribute("textContent") == whole["choices"][0]["message"]["content"]
        if whole["usage"]["completion_tokens"] > 1:
            assert int(shown.get_attribute("data-pieces")) > 1, model  # it arrived in pieces

    driver.get(f"{url}/playground")
    Select(driver.find_element(By.ID, "run-select")).select_by_visible_text(
        next(o.text for o in driver.find_elements(By.CSS_SELECTOR, "#run-select option") if o.text.startswith("lora"))
    )
    driver.find_element(By.ID, "load-runs").click()  # the page loads the models in place
    wait(driver, lambda d: not d.find_element(By.ID, "playground-ask").get_attribute("hidden"))
    driver.find_element(By.ID, "field-text").send_keys("a gripping, beautifully acted film")
    driver.find_element(By.ID, "send").click()
    wait(
        driver,
        lambda d: all(c.get_attribute("data-done") == "yes" for c in d.find_elements(By.CSS_SELECTOR, ".answer")),
    )
    labels = [
        c.find_element(By.CSS_SELECTOR, ".output").text for c in driver.find_elements(By.CSS_SELECTOR, ".answer")
    ]
    assert len(labels) == 1 and labels[0] in {"negative", "positive"}  # the run alone: its base has no trained head


def _rate_pair(driver, score_for_item) -> list[str]:
    """Click a score for every criterion of both answers and submit; returns the pair's item ids."""
    items = [c.get_attribute("data-item") for c in driver.find_elements(By.CSS_SELECTOR, ".rate-item")]
    for item in items:
        for criterion in human.CRITERIA:
            driver.find_element(
                By.CSS_SELECTOR, f'input[name="{item}.{criterion}"][value="{score_for_item(item, criterion)}"]'
            ).click()
    click_and_load(driver, driver.find_element(By.ID, "submit-rating"))
    return items


def _start_rating(driver, url: str, rater: str) -> None:
    driver.get(f"{url}/rate")
    name = driver.find_element(By.ID, "rater")
    name.clear()
    name.send_keys(rater)
    Select(driver.find_element(By.ID, "sheet")).select_by_value("ui-sheet")
    click_and_load(driver, driver.find_element(By.ID, "start-rating"))
    wait(driver, lambda d: d.find_elements(By.ID, "progress") or d.find_elements(By.ID, "all-rated"))


def test_two_raters_rate_at_once_resume_and_see_the_report(app, browser):
    url, _, _ = app
    ann, bob = browser(), browser()
    _start_rating(ann, url, "ann")
    _start_rating(bob, url, "bob")
    assert ann.find_element(By.ID, "progress").text == "Pair 1 of 2" == bob.find_element(By.ID, "progress").text
    page = ann.page_source
    assert "smollm2" not in page and "summarise" not in page  # blind: nothing names the systems
    shot(ann, "5-rate")

    ann_scores = lambda item, criterion: 4  # noqa: E731
    bob_scores = lambda item, criterion: {"fluency": 5, "coherence": 3, "relevance": 2}[criterion]  # noqa: E731
    first = _rate_pair(ann, ann_scores)
    wait(ann, lambda d: d.find_element(By.ID, "progress").text == "Pair 2 of 2")
    ann.quit()  # ann stops half way ...
    assert _rate_pair(bob, bob_scores) == first  # the same shuffled pair first for every rater
    wait(bob, lambda d: d.find_element(By.ID, "progress").text == "Pair 2 of 2")

    ann = browser()  # ... and comes back in a new browser
    _start_rating(ann, url, "ann")
    assert ann.find_element(By.ID, "progress").text == "Pair 2 of 2"
    ann.find_element(By.ID, "submit-rating").click()  # nothing ticked: the browser itself asks for a score
    assert ann.find_element(By.ID, "progress").text == "Pair 2 of 2"
    second = _rate_pair(ann, ann_scores)
    _rate_pair(bob, bob_scores)
    for driver in (ann, bob):
        wait(driver, lambda d: d.find_elements(By.ID, "all-rated"))

    with sqlite3.connect(human.db_path()) as connection:
        stored = connection.execute(
            "SELECT rater, item_id, criterion, score FROM ratings WHERE sheet = 'ui-sheet'"
        ).fetchall()
    expected = [("ann", i, c, ann_scores(i, c)) for i in first + second for c in human.CRITERIA]
    expected += [("bob", i, c, bob_scores(i, c)) for i in first + second for c in human.CRITERIA]
    assert sorted(stored) == sorted(expected)

    ann.get(f"{url}/rate/ui-sheet/report")
    report = ann.find_element(By.ID, "report").text
    summary = human.report("ui-sheet")
    alpha = summary["agreement"]["fluency"]
    assert "Krippendorff" in report and summary["raters"] == ["ann", "bob"]
    assert (f"{alpha['alpha']:.3f}" if alpha.get("alpha") is not None else alpha["reason"]) in report
    shot(ann, "6-report")


def test_a_training_runs_curve_grows_until_it_stops(app, browser, tiny_encoder):
    url, workspace, _ = app
    config = _tiny_config(workspace, tiny_encoder, "still-training", max_steps=100_000, logging_steps=5)
    training = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(config), f"output_dir={workspace / 'runs'}"],
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored across exec: give the run
        # Ctrl-C back, as a terminal would, so it can stop as interrupted.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + WAIT
        while not list((workspace / "runs").glob("still-training-*/metrics.jsonl")):
            assert training.poll() is None and time.monotonic() < deadline, "the run did not start logging"
            time.sleep(0.5)
        (run,) = (workspace / "runs").glob("still-training-*")
        driver = browser()
        driver.get(f"{url}/run/runs/{run.name}")
        assert driver.find_element(By.ID, "run-state").text == "running"
        wait(driver, lambda d: points(d, "loss") > 0)
        seen = points(driver, "loss")
        wait(driver, lambda d: points(d, "loss") > seen + 1)  # the page polls: no reload, more points
        shot(driver, "7-running")
    finally:
        training.send_signal(signal.SIGINT)
        training.wait(timeout=WAIT)
    wait(driver, lambda d: d.find_element(By.ID, "run-state").text == "interrupted")
    assert RunDir(run).state()["state"] == "interrupted"
    shutil.rmtree(run)  # the other tests count the runs
