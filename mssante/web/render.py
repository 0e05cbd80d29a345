"""Templates (Jinja2, autoescaped) and the responses every page goes out with."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mssante.web.assets import dsfr_dir
from mssante.web.security import secure

TEMPLATES = Path(__file__).resolve().parent / "templates"
PARIS = ZoneInfo("Europe/Paris")

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(value: datetime | None) -> str:
    """A time as a French reader expects it: « 05/12/2026 à 14:03 » (Paris time)."""
    if value is None:
        return ""
    return value.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")


def size(value: int) -> str:
    if value < 1024:
        return f"{value} o"
    if value < 1024 * 1024:
        return f"{value / 1024:.0f} Ko"
    return f"{value / 1024 / 1024:.1f} Mo"


_env.filters["when"] = when
_env.filters["size"] = size


# Confirmations after a form, by code (a URL never carries the text itself).
FLASH = {
    "deconnecte": "Vous êtes déconnecté.",
    "reponse": "Votre réponse a été envoyée.",
    "ordonnance": "Votre ordonnance a été envoyée à la pharmacie.",
    "masque": (
        "Le document est masqué aux professionnels (son auteur et votre médecin traitant le voient encore)."
    ),
    "affiche": "Le document est de nouveau visible par les professionnels autorisés.",
    "supprime": "Le document a été supprimé.",
    "depose": "Le document a été déposé.",
    "bloque": "Ce professionnel ne peut plus accéder à votre dossier.",
    "debloque": "Ce professionnel peut de nouveau accéder à votre dossier, selon les règles habituelles.",
    "medecin": "Votre médecin traitant est enregistré.",
    "profil": "Votre profil médical est enregistré.",
    "notifications": "Vos préférences de notification sont enregistrées.",
    "bris": "Accès d'urgence ouvert. Le patient en est informé, avec la raison indiquée.",
    "masque_ps": "Le document est masqué aux autres professionnels.",
    "demasque_ps": "Le document est de nouveau visible par les autres professionnels.",
    "dossier": "Le dossier affiché a changé.",
    "file_relancer": "L'entrée est à nouveau due : le relais la reprend à son prochain passage.",
    "file_supprimer": "L'entrée est retirée de la file ; l'expéditeur reçoit un avis (DSN) avec la raison.",
}


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = request.app.state.runtime.settings
    context.setdefault("user", None)
    context.setdefault("csrf", "")
    context.setdefault("space", None)
    context.setdefault("flash_text", FLASH.get(request.query_params.get("ok") or ""))
    html = _env.get_template(template).render(
        dsfr=dsfr_dir(settings.web.dsfr_dir) is not None, path=request.url.path, **context
    )
    return secure(HTMLResponse(html, status_code=status_code))  # type: ignore[return-value]


def redirect(url: str, ok: str | None = None) -> RedirectResponse:
    """A 303 after a form (POST/redirect/GET); ``ok`` is a short French confirmation."""
    if ok:
        from urllib.parse import urlencode

        url = f"{url}{'&' if '?' in url else '?'}{urlencode({'ok': ok})}"
    return secure(RedirectResponse(url, status_code=303))  # type: ignore[return-value]
