"""The CDS Hooks edge: discovery, the ``patient-view`` service with prefetch and fetch
(``service``), the cards (``cards``) and the trust placed in calling EHRs (``trust``). Imports
every layer below the edges, never ``api``."""
