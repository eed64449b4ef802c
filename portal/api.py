"""Portal API: who am I, and my tokens."""
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from portal import services
from portal.api_base import TenantApiView
from portal.models import ApiToken
from portal.scope import SIGNED_IN
from portal.selectors import token_get, token_list


class MeApi(TenantApiView):
    capabilities = {"GET": SIGNED_IN}

    class MeSerializer(serializers.Serializer):
        username = serializers.CharField()
        tenant = serializers.CharField(allow_null=True)
        roles = serializers.ListField(child=serializers.CharField())

    hides_refusals = False  # every signed-in caller may ask: no 404 (portal.openapi)

    @extend_schema(summary="Who am I: user, acting tenant and roles", tags=["account"], responses=MeSerializer)
    def get(self, request):
        tenant = self.scope.tenant
        return Response(self.MeSerializer({
            "username": request.user.get_username(),
            "tenant": tenant.slug if tenant else None,
            "roles": sorted(self.scope.roles),
        }).data)


class TokenListApi(TenantApiView):
    capabilities = {"GET": SIGNED_IN}  # one's own tokens, or the tenant's for its admins (token_list)

    class TokenSerializer(serializers.ModelSerializer):
        user = serializers.CharField(source="user.username")

        class Meta:
            model = ApiToken
            fields = ["id", "user", "label", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]

    hides_refusals = False  # one's own tokens, or the tenant's for its admins: no 404 (portal.openapi)

    @extend_schema(summary="List API tokens", tags=["tokens"], operation_id="api_v1_tokens_list",
                   responses=inline_serializer("TokenList", {"results": TokenSerializer(many=True)}))
    def get(self, request):
        return Response({"results": self.TokenSerializer(token_list(self.scope), many=True).data})


class TokenDetailApi(TenantApiView):
    capabilities = {"DELETE": "tokens.own"}

    @extend_schema(summary="Revoke an API token", tags=["tokens"], responses={204: None})
    def delete(self, request, token_id: int):
        token = token_get(self.scope, token_id)
        services.token_revoke(token=token, by_user=request.user, context=self.scope.context)
        return Response(status=204)
