"""What every layer may use: settings (read once from ``TRIALSCREEN_*``), the error types that
become OperationOutcomes, logging and metrics, FHIR date parsing. Imports nothing of the app."""
