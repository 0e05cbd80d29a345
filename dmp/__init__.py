"""The DMP store: patients (qualified INS), documents, authorisation matrix, masking, consent,
break-glass, access trace, and the deposit of IHE XDM packages received by message.

Layout: ``codes`` (reference tables as data), ``rules`` (every access decision, pure),
``models`` (tables), ``service`` (the API every interface calls), ``xdm`` (packages),
``deposit`` (from an accepted message to documents and the answer to the sender), ``api``
(HTTP). It never imports the SMTP or IMAP front doors.
"""
