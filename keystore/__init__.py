"""Keys and the sealed-bundle format.

Plain Python plus ``cryptography``: no Django, no models, so a security
auditor can read this package on its own.
"""
