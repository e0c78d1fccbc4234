"""Documents service (seed §6): uploads, validation, the carte grise and receipts as signed PDFs."""
