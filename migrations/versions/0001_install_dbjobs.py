"""Install dbjobs: its schema, cleanup procedure and pg_cron jobs.

Revision ID: 0001_install_dbjobs
Revises:
"""

from alembic import op

import dbjobs.alembic

revision = "0001_install_dbjobs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    dbjobs.alembic.install(op)


def downgrade() -> None:
    dbjobs.alembic.uninstall(op)
