from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from search import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("radar/", views.radar, name="radar"),
    path("kbs/", views.kb_list_page, name="kb-list"),
    path("kbs/<int:kb_id>/", views.kb_detail_page, name="kb-detail"),
    path("kbs/<int:kb_id>/upload/", views.kb_upload, name="kb-upload"),
    path("kbs/<int:kb_id>/imports/<int:job_id>/", views.kb_import, name="kb-import"),
    path("kbs/<int:kb_id>/delete/", views.kb_delete, name="kb-delete"),
    path("kbs/<int:kb_id>/documents/<int:doc_id>/delete/", views.document_delete, name="document-delete"),
    path("api/v1/search", api.SearchApi.as_view(), name="api-search"),
    path("api/v1/radar", api.RadarApi.as_view(), name="api-radar"),
    path("api/v1/kbs", api.KbListApi.as_view(), name="api-kbs"),
    path("api/v1/kbs/<int:kb_id>", api.KbDetailApi.as_view(), name="api-kb-detail"),
    path("api/v1/kbs/<int:kb_id>/documents", api.DocumentListApi.as_view(), name="api-documents"),
    path("api/v1/kbs/<int:kb_id>/documents/<int:doc_id>", api.DocumentDetailApi.as_view(), name="api-document"),
    path("api/v1/kbs/<int:kb_id>/imports", api.ImportListApi.as_view(), name="api-imports"),
    path("api/v1/imports/<int:job_id>", api.ImportDetailApi.as_view(), name="api-import"),
    path("v1/embeddings", api.EmbeddingsApi.as_view(), name="openai-embeddings"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: no inline script (CSP).
    path("api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
