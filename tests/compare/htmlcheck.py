"""Structural checks of generated HTML: parsed with html.parser, SVG parsed as XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'
_RESOURCE_ATTRS = {"src", "href", "xlink:href", "srcset", "poster", "data", "action"}


class Page(HTMLParser):
    """Collects ids, tags, resource attributes and the text of each section."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.resources: list[str] = []
        self.styles: list[str] = []
        self.section_text: dict[str, str] = {}
        self._section: str | None = None
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section":
            self._section = a.get("id")
            self.section_text.setdefault(self._section, "")
        self._in_style = tag == "style"
        for k, v in attrs:
            if k in _RESOURCE_ATTRS and v:
                self.resources.append(v)
        if tag == "link":
            self.resources.append(a.get("href") or "")

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
        elif self._section:
            self.section_text[self._section] += data


def svgs(text: str) -> list[ET.Element]:
    """Every inline <svg>...</svg> parsed as XML (raises on malformed markup)."""
    blocks = re.findall(r"<svg\b.*?</svg>", text, flags=re.S)
    return [ET.fromstring(b) for b in blocks]


def check_self_contained(text: str) -> Page:
    """No external resource anywhere: no src/href, no CSS url()/@import, no http(s) left once
    the SVG namespace declarations are removed; a print stylesheet is present."""
    page = Page(text)
    assert page.resources == [], page.resources
    css = "\n".join(page.styles)
    assert "@media print" in css
    assert "url(" not in css and "@import" not in css
    assert "script" not in page.tags
    stripped = text.replace(SVG_NS, "")
    assert "http://" not in stripped and "https://" not in stripped
    return page
