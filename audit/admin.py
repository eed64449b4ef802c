"""Where the admin's autodiscovery looks; the audit review's admin lives in
audit/review/admin.py."""
from audit.review import admin  # noqa: F401  (registers AuditEventAdmin)
