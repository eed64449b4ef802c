from django.contrib import admin

from portal.models import ApiToken, Membership, Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at"]

    def has_module_permission(self, request):
        return request.user.is_superuser


class _SuperuserOnly(admin.ModelAdmin):
    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(Membership)
class MembershipAdmin(_SuperuserOnly):
    list_display = ["user", "tenant", "role"]
    list_filter = ["tenant", "role"]


@admin.register(ApiToken)
class ApiTokenAdmin(_SuperuserOnly):
    list_display = ["prefix", "user", "tenant", "label", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["digest", "prefix", "created_at", "last_used_at"]
