"""Conformance corpus of XDM packages written independently of ``dmp.xdm`` (see ``builder``)."""
