"""Identities and authentication, shared by the SMTP and IMAP front doors.

- ``identity``: the ``Identity`` value (professional / staff / application / patient) the policy receives;
- ``offer``: which SASL mechanisms a connection may be offered (none before TLS);
- ``authenticator``: the async facade front doors call (``Authenticator.begin(...).start/step``);
- ``sasl``: sans-I/O mechanisms PLAIN, OAUTHBEARER, XOAUTH2, EXTERNAL (no LOGIN);
- ``tokens``: offline JWT validation against configured issuers' JWKS;
- ``accounts``, ``passwords``, ``models``: local accounts, argon2id, TOTP, APP certificates;
- ``throttle``: brute-force counters, growing delays and lockouts;
- ``devpki``, ``testidp``: development CA and local identity provider (demo mode, tests);
- ``harness``, ``testing``: protocol-neutral SASL driver and pytest fixtures (tests only).
"""
