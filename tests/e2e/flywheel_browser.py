"""A real headless browser on the Airflow UI: Debian's chromium driven by playwright.

Logged in the way Airflow's UI is: the JWT from ``POST /auth/token`` in the ``_token`` cookie.
Screenshots go to FLYWHEEL_SCREENSHOT_DIR when it is set (docs/images is refreshed that way),
else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests

CHROMIUM = os.environ.get("FLYWHEEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run"]


def missing() -> str | None:
    """Why no browser test can run here (None when it can)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM} (make install adds Debian's chromium where it runs as root with apt-get)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements-dev.txt)"
    return None


def token(base_url: str, user: str, password: str) -> str:
    resp = requests.post(f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30)
    resp.raise_for_status()
    return resp.json()["access_token"]


@contextmanager
def logged_in_page(base_url: str, user: str, password: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            host = urlparse(base_url).hostname
            context.add_cookies([{"name": "_token", "value": token(base_url, user, password), "domain": host,
                                  "path": "/"}])
            yield context.new_page()
        finally:
            browser.close()


def screenshot_dir(default: Path) -> Path:
    out = Path(os.environ.get("FLYWHEEL_SCREENSHOT_DIR") or default)
    out.mkdir(parents=True, exist_ok=True)
    return out
