"""annuaire: professionals, structures, BAL, operator whitelist

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "annuaire_operator_domains",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_annuaire_operator_domains")),
    )
    op.create_table(
        "annuaire_professionals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("idnat", sa.String(length=32), nullable=False),
        sa.Column("id_type", sa.String(length=4), nullable=False),
        sa.Column("identifier", sa.String(length=32), nullable=False),
        sa.Column("civilite", sa.String(length=32), nullable=True),
        sa.Column("nom", sa.String(length=200), nullable=True),
        sa.Column("prenom", sa.String(length=200), nullable=True),
        sa.Column("categorie_code", sa.String(length=8), nullable=True),
        sa.Column("profession_code", sa.String(length=8), nullable=True),
        sa.Column("profession_label", sa.String(length=200), nullable=True),
        sa.Column("savoir_faire_code", sa.String(length=32), nullable=True),
        sa.Column("savoir_faire_label", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annuaire_professionals")),
        sa.UniqueConstraint("idnat", name=op.f("uq_annuaire_professionals_idnat")),
    )
    with op.batch_alter_table("annuaire_professionals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_annuaire_professionals_nom"), ["nom"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_annuaire_professionals_profession_code"), ["profession_code"], unique=False
        )

    op.create_table(
        "annuaire_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annuaire_state")),
    )
    op.create_table(
        "annuaire_structures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("identifier", sa.String(length=64), nullable=False),
        sa.Column("id_type", sa.String(length=16), nullable=True),
        sa.Column("raison_sociale", sa.String(length=300), nullable=True),
        sa.Column("enseigne", sa.String(length=300), nullable=True),
        sa.Column("categorie", sa.String(length=8), nullable=True),
        sa.Column("complement_localisation", sa.String(length=200), nullable=True),
        sa.Column("complement_distribution", sa.String(length=200), nullable=True),
        sa.Column("numero_voie", sa.String(length=32), nullable=True),
        sa.Column("complement_numero_voie", sa.String(length=32), nullable=True),
        sa.Column("type_voie", sa.String(length=64), nullable=True),
        sa.Column("libelle_voie", sa.String(length=200), nullable=True),
        sa.Column("lieu_dit", sa.String(length=200), nullable=True),
        sa.Column("ligne_acheminement", sa.String(length=200), nullable=True),
        sa.Column("code_postal", sa.String(length=16), nullable=True),
        sa.Column("departement", sa.String(length=64), nullable=True),
        sa.Column("pays", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annuaire_structures")),
        sa.UniqueConstraint("identifier", name=op.f("uq_annuaire_structures_identifier")),
    )
    with op.batch_alter_table("annuaire_structures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_annuaire_structures_raison_sociale"), ["raison_sociale"], unique=False
        )

    op.create_table(
        "annuaire_bals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("address_key", sa.String(length=320), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=8), nullable=False),
        sa.Column("professional_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("structure_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("responsible_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("ins", sa.String(length=15), nullable=True),
        sa.Column("service", sa.String(length=300), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("dematerialisation", sa.Boolean(), nullable=True),
        sa.Column("liste_rouge", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["professional_id"],
            ["annuaire_professionals.id"],
            name=op.f("fk_annuaire_bals_professional_id_annuaire_professionals"),
        ),
        sa.ForeignKeyConstraint(
            ["responsible_id"],
            ["annuaire_professionals.id"],
            name=op.f("fk_annuaire_bals_responsible_id_annuaire_professionals"),
        ),
        sa.ForeignKeyConstraint(
            ["structure_id"],
            ["annuaire_structures.id"],
            name=op.f("fk_annuaire_bals_structure_id_annuaire_structures"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annuaire_bals")),
        sa.UniqueConstraint("address_key", name=op.f("uq_annuaire_bals_address_key")),
    )
    with op.batch_alter_table("annuaire_bals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_annuaire_bals_domain"), ["domain"], unique=False)
        batch_op.create_index(batch_op.f("ix_annuaire_bals_ins"), ["ins"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_annuaire_bals_professional_id"), ["professional_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_annuaire_bals_responsible_id"), ["responsible_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_annuaire_bals_structure_id"), ["structure_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("annuaire_bals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annuaire_bals_structure_id"))
        batch_op.drop_index(batch_op.f("ix_annuaire_bals_responsible_id"))
        batch_op.drop_index(batch_op.f("ix_annuaire_bals_professional_id"))
        batch_op.drop_index(batch_op.f("ix_annuaire_bals_ins"))
        batch_op.drop_index(batch_op.f("ix_annuaire_bals_domain"))

    op.drop_table("annuaire_bals")
    with op.batch_alter_table("annuaire_structures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annuaire_structures_raison_sociale"))

    op.drop_table("annuaire_structures")
    op.drop_table("annuaire_state")
    with op.batch_alter_table("annuaire_professionals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annuaire_professionals_profession_code"))
        batch_op.drop_index(batch_op.f("ix_annuaire_professionals_nom"))

    op.drop_table("annuaire_professionals")
    op.drop_table("annuaire_operator_domains")
