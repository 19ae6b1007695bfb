"""Reading a patient's record from the hospital's FHIR server: what to fetch for the loaded
criteria (``fetch_plan``), the FHIR client with retries, deadlines and paging rules (``client``),
outbound auth incl. SMART Backend Services (``auth``), record sources for the EHR and the bundled
demo patients (``record_source``) and the shared HTTP connection (``connection``). Imports
``fhir_io``, ``engine``, ``catalog`` and ``core``."""
