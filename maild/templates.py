"""Render outgoing mail from the site's jinja2 templates in ``templates/``.

A template is one file per body: ``NAME.txt.j2`` (required) and ``NAME.html.j2``
(optional). The text template sets the subject with ``{% set subject %}…{% endset %}``, so
subject and body live side by side. StrictUndefined turns a typo into an error at render
time instead of an empty hole in a customer's mail.

Templates are read into memory when the renderer is built (start-up and SIGHUP), not from
disk on every render: an admin editing a file cannot half-break the running daemon, and a
reload that finds an error keeps the templates that were working.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, TemplateError, TemplateNotFound

from maild.errors import ConfigError


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class Renderer:
    """Holds a jinja2 environment; ``reload()`` (SIGHUP) drops cached templates."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._env = self._make_env()

    def _make_env(self) -> Environment:
        try:
            sources = {
                p.relative_to(self.directory).as_posix(): p.read_text(encoding="utf-8")
                for p in sorted(self.directory.rglob("*.j2"))
            }
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.directory}: cannot read templates: {exc}") from None
        return Environment(
            loader=DictLoader(sources),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def reload(self) -> None:
        self._env = self._make_env()

    def check(self, required: list[str]) -> None:
        """Fail early (start-up, reload) if a required template is missing or any does not compile."""
        names = self._env.list_templates()
        for name in required:
            if name + ".txt.j2" not in names:
                raise ConfigError(f"{self.directory / (name + '.txt.j2')}: template not found")
        for name in names:
            try:
                self._env.get_template(name)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                where = f" line {line}" if line else ""
                raise ConfigError(f"{self.directory / name}:{where}: {exc}") from None

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        text_template = self._env.get_template(name + ".txt.j2")
        module = text_template.make_module(context)
        subject = " ".join(str(getattr(module, "subject", "")).split())
        html: str | None = None
        try:
            html = self._env.get_template(name + ".html.j2").render(context)
        except TemplateNotFound:
            pass
        return Rendered(subject=subject, text=str(module), html=html)
