from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Debian's chromium and chromium-driver (make system-tools installs them); never a download.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
WINDOW = (1400, 2400)


@dataclass(frozen=True)
class Image:
    alt: str
    complete: bool
    natural_width: int
    natural_height: int
    shown_width: int


@dataclass(frozen=True)
class TableShape:
    title: str
    columns: int
    rows: int


@dataclass
class PageReport:
    title: str
    ready_state: str
    images: list[Image]
    tables: list[TableShape]
    failed_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        if (path := shutil.which(name)) is not None:
            return path
    return None


def require_chromium() -> tuple[str, str]:
    chromium, driver = _which(CHROMIUM_NAMES), _which(DRIVER_NAMES)
    if chromium is None or driver is None:
        pytest.skip(
            "headless Chromium is not installed (Debian packages chromium and chromium-driver; "
            "`make system-tools` installs them as root)"
        )
    return chromium, driver


_INSPECT = """
const images = Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, natural_width: i.naturalWidth,
  natural_height: i.naturalHeight, shown_width: i.getBoundingClientRect().width}));
const tables = Array.from(document.querySelectorAll('table')).map(t => {
  const heading = t.previousElementSibling;
  return {title: heading && heading.tagName === 'H2' ? heading.textContent : '',
    columns: t.querySelectorAll('thead th').length,
    rows: t.querySelectorAll('tbody tr').length};
});
return {title: document.title, ready_state: document.readyState, images, tables};
"""


def open_page(page: Path, screenshot: Path) -> PageReport:
    """Load a local page in headless Chromium, take a screenshot and report what loaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the suite may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        found: dict[str, Any] = driver.execute_script(_INSPECT)
        driver.save_screenshot(str(screenshot))
        report = PageReport(
            title=found["title"],
            ready_state=found["ready_state"],
            images=[Image(**image) for image in found["images"]],
            tables=[TableShape(**table) for table in found["tables"]],
            screenshot=screenshot,
        )
        urls: dict[str, str] = {}
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"][:200]
            elif message["method"] == "Network.loadingFailed":
                url = urls.get(params["requestId"], "?")
                report.failed_requests.append(f"{params.get('errorText')} {url}")
            elif message["method"] == "Network.responseReceived":
                response = message["params"]["response"]
                if int(response.get("status") or 0) >= 400:
                    report.failed_requests.append(f"{response['status']} {response['url']}")
        report.console_errors = [
            entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
        ]
        return report
    finally:
        driver.quit()


def drawn_fraction(png: Path) -> float:
    """The share of a screenshot's pixels that are neither white nor near-white."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[:, :, :3]
    return float((pixels.min(axis=2) < 0.9).mean())
