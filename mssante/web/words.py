"""The trace in readable French: who (a name from the annuaire, never a code), did what."""

from __future__ import annotations

from annuaire.lookup import Annuaire
from annuaire.nomenclatures import default as nomenclatures

ACTIONS = {
    "feed": "a ajouté un document",
    "replace": "a remplacé un document par une nouvelle version",
    "list": "a consulté la liste de vos documents",
    "read": "a ouvert un document",
    "search": "a recherché votre dossier",
    "break_glass": "a utilisé l'accès d'urgence (bris de glace)",
    "mask": "a masqué un document",
    "unmask": "a rendu visible un document",
    "delete": "a supprimé un document",
    "profile": "a consulté votre profil médical",
    "deposit": "a déposé un document",
    "history": "a voulu lire l'historique des accès",
    "patient.update": "a mis à jour votre identité",
    "patient.opposition": "a changé votre opposition à l'accès au DMP",
    "patient.emergency_access": "a changé l'autorisation d'accès d'urgence",
    "patient.care_team.add": "a ajouté un professionnel à votre équipe de soins",
    "patient.care_team.remove": "a retiré un professionnel de votre équipe de soins",
    "patient.consent": "a enregistré votre consentement pour un professionnel",
    "patient.legal_representative.add": "a ajouté un représentant légal",
    "patient.hide": "a masqué un document aux professionnels",
    "patient.unhide": "a rendu un document visible aux professionnels",
    "patient.block": "a bloqué un professionnel",
    "patient.unblock": "a débloqué un professionnel",
    "patient.medecin_traitant": "a déclaré le médecin traitant",
    "patient.notifications": "a changé le mode de notification",
    "patient.profile": "a modifié le profil médical",
}
ROLES = {"patient": "Vous", "legal_representative": "Votre représentant légal", "operator": "L'opérateur"}


def professional_name(annuaire: Annuaire, idnat: str) -> str:
    pro = annuaire.professional(idnat)
    if pro is None:
        return f"Professionnel n° {idnat}"
    title = "Dr " if pro.profession_code == "10" else ""
    name = " ".join(p for p in (pro.prenom, pro.nom) if p)
    label = pro.profession_label or nomenclatures().profession_label(pro.profession_code) or ""
    return f"{title}{name}" + (f" ({label.lower()})" if label else "")


def author_name(annuaire: Annuaire, author: str) -> str:
    """A document's author: a professional by name, or the patient's side (an INS)."""
    if len(author) == 15:
        return "Le patient ou son représentant légal"
    return professional_name(annuaire, author)


def who(annuaire: Annuaire, actor: str, role: str) -> str:
    """« Dr Claire MARTIN (médecin) », « Vous », « Secrétariat (secrétaire médicale) »…"""
    kind, _, ident = actor.partition(":")
    if role in ROLES and kind != "professional":
        return ROLES[role]
    if kind == "professional":
        return professional_name(annuaire, ident)
    if kind == "staff":
        return f"{ident} (personnel de l'établissement)"
    return ROLES.get(role, "Le système")


def what(action: str, outcome: str, *, you: bool = False, about: str | None = None) -> str:
    """« a ouvert un document : Bilan sanguin » (« avez » when the patient did it)."""
    said = ACTIONS.get(action, action)
    if you and said.startswith("a "):
        said = "avez " + said[2:]
    if about:
        said = f"{said} : {about}"
    if outcome != "ok":
        return f"{said} (tentative refusée)"
    return said


# The patient's own consultations are not listed in "who accessed my record".
OWN_READS = ("list", "read", "profile", "history")
NAMED_PROFESSIONAL = (
    "patient.block",
    "patient.unblock",
    "patient.medecin_traitant",
    "patient.care_team.add",
    "patient.care_team.remove",
    "patient.consent",
)


# Refusals of the DMP rules (English in the trace and the API), as the pages say them.
REFUSALS = (
    ("the patient has blocked this professional", "Le patient a bloqué votre accès à son dossier."),
    ("the patient has opposed access", "Le patient s'est opposé à l'accès à son DMP."),
    (
        "no consent",
        "Vous n'avez pas le consentement du patient (vous n'êtes pas dans son équipe de soins). "
        "En cas d'urgence, utilisez l'accès d'urgence (bris de glace) en indiquant la raison.",
    ),
    ("the patient has not authorised emergency access", "Le patient n'a pas autorisé l'accès d'urgence."),
    ("hidden from professionals by the patient", "Le patient a masqué ce document aux professionnels."),
    ("masked to professionals", "L'auteur a masqué ce document aux autres professionnels."),
    (
        "the authorisation matrix",
        "La matrice d'habilitation ne permet pas à votre profession de lire ce type de document.",
    ),
    ("only the author", "Seul l'auteur d'un document peut le masquer, le démasquer ou le supprimer."),
    ("hidden from the patient", "Ce document ne vous est pas accessible."),
    ("break-glass needs a reason", "L'accès d'urgence demande une raison."),
    ("no patient with INS", "Aucun patient avec cet INS dans le DMP."),
    ("is not an INS matricule", "Cet INS n'est pas valide (15 caractères, clé comprise)."),
    ("is not an IdNat_PS", "Cet identifiant n'est pas un identifiant national de professionnel (8 + RPPS)."),
    ("is not a doctor", "Ce professionnel n'est pas un médecin inscrit à l'annuaire."),
    (
        "the médecin traitant cannot be blocked",
        "Vous ne pouvez pas bloquer votre médecin traitant : déclarez-en un autre d'abord.",
    ),
    (
        "a blocked professional cannot be the médecin traitant",
        "Ce professionnel est bloqué : débloquez-le avant de le déclarer médecin traitant.",
    ),
    ("an e-mail channel needs a valid address", "Indiquez une adresse électronique valide."),
    ("a patient deposits only", "Vous ne pouvez déposer que des documents de l'espace patient."),
    ("a patient deletes only", "Vous ne pouvez supprimer que les documents que vous avez déposés."),
    ("the patient's INS is not qualified", "L'INS de ce patient n'est pas qualifié : aucun dépôt possible."),
    ("only a professional registered", "Seul un professionnel inscrit à l'annuaire peut alimenter le DMP."),
    ("type code", "Ce type de document n'est pas dans la nomenclature JDV_J07."),
    ("a profile entry holds at most", "Ce texte est trop long (4 000 caractères au plus)."),
    ("the document is", "Ce document n'est plus en vigueur (remplacé ou supprimé)."),
    ("no current document", "Ce document n'existe pas ou n'est plus en vigueur."),
    ("no document", "Ce document n'existe pas."),
    ("only professionals search patients", "Seuls les professionnels recherchent un patient."),
)


def refusal(message: str) -> str:
    """The French sentence for a DMP refusal (the reason itself when none matches)."""
    for start, french in REFUSALS:
        if start in message:
            return french
    return f"Action refusée : {message}"
