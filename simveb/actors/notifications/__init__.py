"""Notifications service (seed §7): templates, email/SMS/push/in-app, durable delivery."""
