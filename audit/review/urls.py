from django.urls import path

from audit.review import api, views

urlpatterns = [
    path("api/v1/audit/events", api.AuditEventListApi.as_view(), name="api-audit-events"),
    path("api/v1/audit/export", api.AuditExportApi.as_view(), name="api-audit-export"),
    path("api/v1/audit/export/presign", api.AuditExportPresignApi.as_view(), name="api-audit-export-presign"),
    path("audit/dashboard/", views.dashboard, name="audit-dashboard"),
]
