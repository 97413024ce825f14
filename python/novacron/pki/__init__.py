"""NovaCron's small certificate authority and the identity carried in certificates."""
