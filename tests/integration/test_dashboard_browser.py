from __future__ import annotations

import base64
from pathlib import Path

from tests.browser_support import drawn_fraction, open_page

# A 1x1 red PNG.
_PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a3b0a1b70000000049454e44ae426082"
    )
).decode()


def test_the_browser_check_sees_what_failed_to_load(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><title>broken</title>"
        '<link rel="stylesheet" href="missing.css"></head><body>'
        f'<img alt="ok" src="data:image/png;base64,{_PIXEL}">'
        '<img alt="missing" src="missing.png">'
        '<img alt="corrupt" src="data:image/png;base64,aGVsbG8=">'
        "<h2>empty</h2><table><thead><tr><th>a</th></tr></thead><tbody></tbody></table>"
        "<script>undefined_function()</script></body></html>"
    )
    report = open_page(page, tmp_path / "broken.png")
    by_alt = {image.alt: image for image in report.images}
    assert by_alt["ok"].natural_width == 1
    assert by_alt["missing"].natural_width == 0
    assert by_alt["corrupt"].natural_width == 0
    assert any("missing.png" in failure for failure in report.failed_requests)
    assert any("missing.css" in failure for failure in report.failed_requests)
    assert any("undefined_function" in error for error in report.console_errors)
    assert [(t.title, t.rows) for t in report.tables] == [("empty", 0)]
    assert drawn_fraction(tmp_path / "broken.png") < 0.01
