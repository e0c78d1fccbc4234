"""Registrations service (seed §4, immatriculation): requests, workflow, plates, renewal, transfer, duplicate."""
