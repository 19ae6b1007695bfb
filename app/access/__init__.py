"""Who may call the REST API: OAuth2 bearer JWTs checked against the issuer's keys, SMART scopes,
per-client rate limits (``inbound``) and the JWKS key cache shared with CDS Hooks caller trust
(``jwks``). Imports ``store`` (refused access is audited) and ``core``."""
