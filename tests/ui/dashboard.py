"""The dashboard in a real browser: Debian's chromium through its chromedriver, with Selenium.

Run by tests/it/ui.rs against a gateway it started (topics ui_work, ui_flaky, ui_slow; see
there). Environment: BASE_URL, OPERATE_KEY (every scope), READ_KEY (read only), SHOTS (a folder
for screenshots). Exits non-zero, with the reason, on the first failed check or on any error in
the page's console.
"""

import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

BASE = os.environ["BASE_URL"]
OPERATE_KEY = os.environ["OPERATE_KEY"]
READ_KEY = os.environ["READ_KEY"]
SHOTS = os.environ["SHOTS"]
WAIT = 30


def api(method, path, body=None, key=OPERATE_KEY):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read() or b"null")


def submit(task_id, topic):
    api("POST", "/tasks/submit", {"task_id": task_id, "worker_id": "ui-worker", "topic": topic, "variables": {"n": 1}})


def until(what, check, limit=WAIT):
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def api_status(task_id):
    return api("GET", f"/tasks/{task_id}/status")["status"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def text_of(driver, css):
    """The text of the first match, or None (also when a live update replaced it meanwhile)."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else None
    except StaleElementReferenceException:
        return None


def row_status(driver, task_id):
    return text_of(driver, f'tr[data-task="{task_id}"] [data-testid="status"]')


def sign_in(driver, key):
    driver.get(BASE + "/ui")
    until("the sign-in form", lambda: driver.find_element(By.ID, "sign-in").is_displayed())
    field = driver.find_element(By.ID, "api-key")
    field.send_keys(key)
    field.submit()
    until("signed in", lambda: not driver.find_element(By.ID, "sign-in").is_displayed())


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def shot(driver, name):
    path = os.path.join(SHOTS, name)
    driver.save_screenshot(path)
    print(f"screenshot {path}")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    driver = browser()
    try:
        run(driver)
    finally:
        driver.quit()


def run(driver):
    # Sign in with the operate key; the overview shows the counts.
    sign_in(driver, OPERATE_KEY)
    until("the overview", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="by-status"]'))

    # Tasks move queued → processing → succeeded in the table, live, with no reload.
    driver.get(BASE + "/ui#/tasks")
    until("the task table", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="tasks"]'))
    driver.execute_script("window.__stayed = 'yes';")
    submit("ui-live-1", "ui_work")  # holds the topic's one consumer for a while
    submit("ui-live-2", "ui_work")  # waits behind it: queued
    news = until("the new-tasks notice", lambda: [b for b in driver.find_elements(By.CSS_SELECTOR, '[data-testid="new-tasks"]') if b.is_displayed()])
    news[0].click()
    seen = []
    def watch():
        status = row_status(driver, "ui-live-2")
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        return status == "succeeded"
    until("ui-live-2 to succeed in the table", watch)
    assert seen[:1] == ["queued"] and "processing" in seen and seen[-1] == "succeeded", f"row went {seen}"
    assert driver.execute_script("return window.__stayed;") == "yes", "the page reloaded"
    shot(driver, "tasks.png")
    driver.get(BASE + "/ui#/overview")
    until("the overview", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="by-status"]'))
    time.sleep(0.5)  # let the charts draw before the picture
    shot(driver, "overview.png")

    # A failed task's timeline; retry it and see it succeed.
    submit("ui-fail-1", "ui_flaky")
    until("ui-fail-1 to fail", lambda: api_status("ui-fail-1") == "failed")
    driver.get(BASE + "/ui#/task/ui-fail-1")
    until("the timeline", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="timeline"] li'))
    shot(driver, "task-timeline.png")
    assert text_of(driver, "h1 [data-testid=status]") == "failed"
    driver.find_element(By.CSS_SELECTOR, '[data-testid="action-retry"]').click()
    until("the retried task to succeed", lambda: text_of(driver, "h1 [data-testid=status]") == "succeeded")
    trace = text_of(driver, '[data-testid="trace-id"]')
    assert trace and len(trace) == 32, f"trace id shown: {trace!r}"

    # Cancel a queued one.
    submit("ui-slow-1", "ui_slow")
    submit("ui-slow-2", "ui_slow")
    until("ui-slow-2 queued behind ui-slow-1", lambda: api_status("ui-slow-1") == "processing" and api_status("ui-slow-2") == "queued")
    driver.get(BASE + "/ui#/task/ui-slow-2")
    button = until("the cancel button", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="action-cancel"]'))
    button[0].click()
    until("the task cancelled", lambda: text_of(driver, "h1 [data-testid=status]") == "cancelled")
    assert api_status("ui-slow-2") == "cancelled"

    # The page reads well on a phone: nothing wider than the screen.
    driver.set_window_size(390, 844)
    driver.get(BASE + "/ui#/tasks")
    until("the task table", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="tasks"]'))
    wide = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth;")
    assert wide <= 0, f"the page is {wide}px wider than a phone's screen"
    shot(driver, "tasks-phone.png")
    driver.set_window_size(1280, 900)

    errors = console_errors(driver)
    assert not errors, f"errors in the page's console: {errors}"

    # A read-only key sees no action buttons.
    driver.find_element(By.ID, "sign-out").click()
    sign_in(driver, READ_KEY)
    driver.get(BASE + "/ui#/task/ui-fail-1")
    until("the task page", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="timeline"] li'))
    buttons = driver.find_elements(By.CSS_SELECTOR, '[data-testid="actions"] button')
    assert not buttons, f"a read key sees {[b.text for b in buttons]}"
    errors = console_errors(driver)
    assert not errors, f"errors in the page's console: {errors}"
    print("dashboard checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
