"""Patient mailboxes (MSSanté citoyenne): what a patient may send, and to whom.

* :mod:`.models` — conversations between a patient BAL and a professional (or ORG) BAL, and
  the Message-IDs that make them up;
* :mod:`.conversations` — reading and writing those records;
* :mod:`.rules` — the patient rules the trust-space policy consults (``PatientRules``);
* :mod:`.hook` — the delivery hook: conversations recorded in the accepting transaction,
  notifications (no medical content) sent after the commit;
* :mod:`.identity` — patient BALs are opened only for a qualified INS.
"""
