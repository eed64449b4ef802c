from django.urls import path

from audit.review import api, views

urlpatterns = [
    path("api/v1/audit/events", api.AuditEventListApi.as_view(), name="api-audit-events"),
    path("api/v1/audit/export", api.AuditExportApi.as_view(), name="api-audit-export"),
    path("api/v1/audit/export/presign", api.AuditExportPresignApi.as_view(), name="api-audit-export-presign"),
    path("api/v1/audit/exports", api.AuditExportJobListApi.as_view(), name="api-audit-export-jobs"),
    path("api/v1/audit/exports/<int:job_id>", api.AuditExportJobApi.as_view(), name="api-audit-export-job"),
    path("api/v1/audit/exports/<int:job_id>/bundle", api.AuditExportJobBundleApi.as_view(),
         name="api-audit-export-bundle"),
    path("audit/dashboard/", views.dashboard, name="audit-dashboard"),
    path("audit/exports/", views.export_submit, name="audit-export-submit"),
]
