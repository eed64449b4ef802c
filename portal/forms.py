from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.utils.translation import gettext_lazy as _

from portal.services import MAX_TOKEN_DAYS


class LoginForm(AuthenticationForm):
    tenant = forms.CharField(required=False, max_length=200, label=_("Organisation (optional)"),
                             help_text=_("Leave empty to use your first organisation."))


class TokenCreateForm(forms.Form):
    label = forms.CharField(max_length=100, required=False, label=_("Label"))
    days = forms.IntegerField(min_value=1, max_value=MAX_TOKEN_DAYS, initial=90, label=_("Valid for (days)"))
