"""Portal API: who am I, and my tokens."""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.context import request_context
from portal import services
from portal.models import ApiToken
from portal.selectors import token_list
from portal.tenancy import acting_roles, get_scoped_or_404


class MeApi(APIView):
    class MeSerializer(serializers.Serializer):
        username = serializers.CharField()
        tenant = serializers.CharField(allow_null=True)
        roles = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses=MeSerializer)
    def get(self, request):
        tenant = request._request.tenant
        return Response(self.MeSerializer({
            "username": request.user.get_username(),
            "tenant": tenant.slug if tenant else None,
            "roles": sorted(acting_roles(request._request)),
        }).data)


class TokenListApi(APIView):
    class TokenSerializer(serializers.ModelSerializer):
        user = serializers.CharField(source="user.username")

        class Meta:
            model = ApiToken
            fields = ["id", "user", "label", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]

    @extend_schema(responses=TokenSerializer(many=True))
    def get(self, request):
        return Response({"results": self.TokenSerializer(token_list(request._request), many=True).data})


class TokenDetailApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, token_id: int):
        token = get_scoped_or_404(token_list(request._request), request._request, pk=token_id)
        services.token_revoke(token=token, by_user=request.user, context=request_context(request._request))
        return Response(status=204)
