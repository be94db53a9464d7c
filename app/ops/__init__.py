"""Every change to admin data goes through these functions, whichever door it came in by
(JSON API, dashboard form, CLI): validation, the change itself and its audit event live here
once. Callers commit; a raised error means nothing was changed."""
