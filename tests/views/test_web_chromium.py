"""The web UI in a real headless Chromium (Debian `chromium` + `chromium-driver`, via selenium).

One browser for the module. No skip: without Chromium the test fails and names the install.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.views.test_web import RECALL_ID, Site

INSTALL = "apt-get install chromium chromium-driver (or `make system-deps` as root)"


def _exe(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (
                str(p)
                for p in (Path("/usr/bin") / name, Path("/usr/lib/chromium") / name)
                if p.exists()
            ),
            None,
        )
        if found:
            return found
    pytest.fail(f"{names[0]} is not installed; the web UI tests need it: {INSTALL}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = _exe("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # The Debian driver, never a download by Selenium Manager.
    driver = webdriver.Chrome(service=Service(_exe("chromedriver")), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(gateway_site, tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("web-chromium"), gateway_site)
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_a_biomed_engineer_follows_the_fleet_to_a_device_and_its_recall(browser, site):
    base = f"http://127.0.0.1:{site.port}"
    browser.get(base + "/")
    assert browser.title == "Fleet overview - Provenance Gateway"
    # The stylesheet loaded under the CSP (a blocked one would leave the default white header).
    header = browser.find_element(By.CSS_SELECTOR, "th")
    assert header.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    # Hostile strings from the store are text, never markup: no script element on the page.
    assert browser.find_elements(By.TAG_NAME, "script") == []
    browser.find_element(By.LINK_TEXT, site.pump).click()
    assert browser.current_url == f"{base}/devices/{site.pump}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table:nth-of-type(2) tbody tr")
    assert len(rows) == 9
    states = [r.find_element(By.CSS_SELECTOR, ".state").text for r in rows]
    assert states == ["stored", "appended", "appended"] + ["anchored"] * 6
    receipts = browser.find_elements(By.LINK_TEXT, "receipt (CBOR)")
    assert len(receipts) == 6
    # The trust folder accepts the pump's certificate; its FHIR and audit bundles are one link away.
    facts = browser.find_elements(By.CSS_SELECTOR, "table:nth-of-type(1) tbody tr td")
    assert facts[-1].text.startswith("valid until ")
    fhir = browser.find_element(By.LINK_TEXT, "FHIR bundle of this device")
    assert fhir.get_attribute("href") == f"{base}/devices/{site.pump}/fhir"
    audit = browser.find_element(By.LINK_TEXT, "Audit bundle of this device")
    assert audit.get_attribute("href") == f"{base}/devices/{site.pump}/audit"
    browser.find_element(By.LINK_TEXT, "Recalls").click()
    browser.find_element(By.LINK_TEXT, RECALL_ID).click()
    assert browser.current_url == f"{base}/recalls/{RECALL_ID}"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Remediation per device" in body
    assert site.pump in body
    assert "offered" in body


def test_the_browser_shows_the_quarantine_with_hostile_text_inert(browser, site):
    browser.get(f"http://127.0.0.1:{site.port}/quarantine")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "<script>alert(1)</script>" in text  # shown as text...
    assert browser.find_elements(By.TAG_NAME, "script") == []  # ...never run
    assert _alert_text(browser) == []


def _alert_text(browser) -> list[str]:
    try:
        return [browser.switch_to.alert.text]
    except NoAlertPresentException:
        return []
