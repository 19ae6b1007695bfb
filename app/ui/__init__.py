"""The web pages for people (``/ui/``): trials and their criteria, screening a patient, the
report, the investigator's sign-off, a patient's history, the audit trail and population runs.
Server-rendered (Jinja2 templates, static assets served by the app, no front-end build); an HTTP
edge beside ``api`` and ``cds``, using the same screening, store and catalog layers."""
