"""User service (seed §2): users, profiles, roles and permissions, KYC."""
