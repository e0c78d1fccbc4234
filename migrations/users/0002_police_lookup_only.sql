-- Data minimisation (issue 13): the police role keeps only the roadside lookup. Databases seeded
-- before this grid change still grant it `vehicles:read` (the seed only adds what is missing).
DELETE FROM users.role_permissions WHERE role = 'police' AND permission = 'vehicles:read';
