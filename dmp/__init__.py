"""The DMP store: patients (qualified INS), documents, authorisation matrix, masking, consent,
break-glass, access trace, and the deposit of IHE XDM packages received by message.

Layout: ``codes`` (reference tables as data), ``rules`` (every access decision, pure),
``models`` (tables), ``service`` (the API every interface calls, split into ``core``,
``patient_register``, ``feeding``, ``reading``, ``managing``; values in ``types``), ``xdm``
(the package builder), ``xdm_reader`` with ``hl7`` (CX identifiers) and ``cda`` (the CDA
header: INS and traits), ``deposit`` (from an accepted message to documents), ``answers`` (the
MDN or error mail the guide describes), ``hook`` (the delivery hook), ``api`` (HTTP). It never
imports the SMTP or IMAP front doors.
"""
