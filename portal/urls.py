from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.i18n import set_language

from audit.review import urls as audit_review_urls
from portal import api, monitoring, views
from search import urls as search_urls

handler404 = "portal.api_errors.api_or_page_404"
handler500 = "portal.api_errors.api_or_page_500"
handler403 = "portal.views.permission_denied"

urlpatterns = [
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tenant/switch/", views.tenant_switch, name="tenant-switch"),
    path("i18n/setlang/", set_language, name="set_language"),
    path("tokens/", views.tokens_page, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", monitoring.MetricsView.as_view(), name="metrics"),
    path("api/v1/me", api.MeApi.as_view(), name="api-me"),
    path("api/v1/tokens", api.TokenListApi.as_view(), name="api-tokens"),
    path("api/v1/tokens/<int:token_id>", api.TokenDetailApi.as_view(), name="api-token-detail"),
    path("", include(audit_review_urls)),
    path("admin/", admin.site.urls),
    path("", include(search_urls)),
]
