"""The annuaire: professionals, structures, mailboxes (BAL) and the operator whitelist."""
