"""Every command that takes --tenant answers an unknown slug the same way:
a clear error that lists the slugs there are, and nothing written."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.ledger.models import AuditEvent


@pytest.mark.parametrize("command,args", [
    ("audit_export", ["--from", "2026-01-01", "--to", "2026-01-02", "--out", "{tmp}/x.zip"]),
    ("audit_verify", []),
    ("audit_checkpoint", []),
    ("token_create", ["--user", "sam"]),
    ("kb_import", ["--kb", "FAQ", "{tmp}/faq.txt"]),
])
def test_unknown_tenant_slug_is_a_clear_error(tenants, make_user, tmp_path, command, args):
    make_user("sam", tenants["acme"], "searcher")
    (tmp_path / "faq.txt").write_text("one entry\n")
    before = AuditEvent.objects.count()
    with pytest.raises(CommandError) as raised:
        call_command(command, "--tenant", "initech", *[a.format(tmp=tmp_path) for a in args])
    assert str(raised.value) == "no tenant with slug 'initech' (known: acme, globex)"
    assert AuditEvent.objects.count() == before and not (tmp_path / "x.zip").exists()
