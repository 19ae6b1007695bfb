"""The web pages under /ui/ (issue 15) and who may open them: OpenID Connect sign-in
(``oidc``, ``auth_routes``), the session cookie (``sessions``) and the dependencies the pages use
(``session``)."""
