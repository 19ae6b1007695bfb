"""FHIR in and out of the engine: a patient's Bundle read into the lean record (``bundle_reader``,
with the digest kept of it) and a screening written as a GuidanceResponse (``report``). Pure
functions over JSON; imports ``engine``, ``catalog`` and ``core``."""
