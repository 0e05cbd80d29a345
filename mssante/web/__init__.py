"""Web pages on the HTTP listener: the patient's own space (``/patient/``) and the DMP web for
professionals (``/pro/``), server-rendered in French with Jinja2.

The page layer (sessions, CSRF, security headers, templates, static files, the DSFR look) is
shared by both spaces and by an operator console to come; each space is a router of its own
that only translates forms to calls of the services that decide (``dmp.service``, the SMTP
policy through the submission listener) and renders their answers.
"""
