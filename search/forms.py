from django import forms
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

TOP_K_CHOICES = [(k, str(k)) for k in (1, 3, 5, 10, 20)]


class SearchForm(forms.Form):
    kb = forms.TypedChoiceField(coerce=int, label=_("Knowledge base"))
    # No max_length and not required here: a browser would cut a long paste
    # without a word. The service refuses an empty or too long query with a
    # message that says so, and audits the refusal.
    query = forms.CharField(label=_("Question"), required=False, strip=True)
    top_k = forms.TypedChoiceField(coerce=int, choices=TOP_K_CHOICES, initial=5,
                                   label=pgettext_lazy("how many", "Results"))

    def __init__(self, *args, kbs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kb"].choices = [(kb.pk, kb.name) for kb in kbs]


class RadarForm(forms.Form):
    documents = forms.CharField(label=_("Lines to search (one per line)"), widget=forms.Textarea, required=False,
                                strip=True)
    query = forms.CharField(label=_("Question"), required=False, strip=True)  # see SearchForm.query
    top_k = forms.TypedChoiceField(coerce=int, choices=TOP_K_CHOICES, initial=5,
                                   label=pgettext_lazy("how many", "Results"))


class KbCreateForm(forms.Form):
    name = forms.CharField(max_length=200, label=_("Name"))
    description = forms.CharField(max_length=500, required=False, label=_("Description"))
    min_score = forms.FloatField(required=False, min_value=0.0, max_value=1.0, label=_("Relevance floor"))


class UploadForm(forms.Form):
    file = forms.FileField(label=_("File (.txt one entry a line, .csv or .jsonl)"))
