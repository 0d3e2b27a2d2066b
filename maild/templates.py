"""Render outgoing mail from the site's jinja2 templates in ``templates/``.

A template is one file per body: ``NAME.txt.j2`` (required) and ``NAME.html.j2``
(optional). The text template sets the subject with ``{% set subject %}…{% endset %}``, so
subject and body live side by side. StrictUndefined turns a typo into an error at render
time instead of an empty hole in a customer's mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound

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
        return Environment(
            loader=FileSystemLoader(str(self.directory)),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def reload(self) -> None:
        self._env = self._make_env()

    def check(self, names: list[str]) -> None:
        """Fail early (start-up, reload) if a required template is missing or does not compile."""
        for name in names:
            for suffix in (".txt.j2", ".html.j2"):
                try:
                    self._env.get_template(name + suffix)
                except TemplateNotFound:
                    if suffix == ".txt.j2":
                        raise ConfigError(f"{self.directory / (name + suffix)}: template not found") from None
                except TemplateError as exc:
                    raise ConfigError(f"{self.directory / (name + suffix)}: {exc}") from None

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
