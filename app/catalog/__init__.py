"""The trials and their terminology as data: the criteria schema (``schema``), the terminology
model (``mappings``), reading and linting ``criteria/`` and ``fhir_mappings/`` (``loader``,
``python -m app.catalog``), and the FHIR definitions published from them (ResearchStudy,
PlanDefinition, ValueSet, CodeSystem, CapabilityStatement: ``publication``). Imports ``core``
only. The engine reads ``schema``, ``mappings`` and ``trial``, which do no I/O."""
