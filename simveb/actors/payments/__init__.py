"""Payments service (seed §5): mobile money (FedaPay, KKiaPay), counter payments, refunds, invoices."""
