"""trialscreen: FHIR-integrated clinical-trial eligibility screening."""
