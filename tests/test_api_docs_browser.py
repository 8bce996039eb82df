"""/api/docs in headless Chromium against gunicorn: Swagger UI renders every operation of the
document, with no JavaScript error and nothing blocked by the page's Content-Security-Policy
(the `page` fixture fails the test on either)."""

import requests
from playwright.sync_api import expect

from .conftest import ROOT
from .test_dashboard_browser import browser, page  # noqa: F401  (the Chromium fixtures)

ARTIFACTS = ROOT / "test-artifacts" / "api-docs"


def test_api_docs_render_every_operation_and_its_schemas(live_server, page):  # noqa: F811
    document = requests.get(f"{live_server}/api/v1/openapi.json", timeout=10).json()
    operations = sum(len(item) for item in document["paths"].values())

    page.goto(f"{live_server}/api/docs")
    expect(page.locator(".opblock")).to_have_count(operations)
    expect(page.locator(".info .title")).to_contain_text("EventFlow API")

    ingest = page.locator(".opblock-post:has(.opblock-summary-path[data-path='/api/v1/events'])")
    ingest.locator(".opblock-summary").click()
    expect(ingest.locator(".parameter__name", has_text="Idempotency-Key")).to_be_visible()
    expect(ingest.locator(".response[data-code='202']")).to_be_visible()
    expect(ingest.locator(".response[data-code='413']")).to_be_visible()
    expect(page.locator(".models")).to_contain_text("ErrorEnvelope")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "api-docs.png", full_page=True)
