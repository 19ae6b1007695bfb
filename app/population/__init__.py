"""Pre-screening a whole population (issue 14): a folder of FHIR Bulk Data NDJSON (or the EHR's
``$export``) grouped by patient, each patient's record screened by the same engine, reader and
report writer as ``$screen`` (``patient_run``), and the results written as a ranked candidate
list, an attrition funnel and a FHIR Group per trial (``outputs``). Imports ``screening``,
``store``, ``ehr``, ``fhir_io``, ``engine``, ``catalog`` and ``core``."""
