"""demo_setup without a model bundle: one line naming EMBED_MODEL_PATH, nothing written."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portal.models import Tenant


def test_missing_bundle_is_a_one_line_error_naming_the_variable(db, settings, tmp_path):
    from search.engine import set_engine

    previous = set_engine(None)  # no engine served in this process: demo_setup must open the bundle
    settings.EMBED_MODEL_PATH = str(tmp_path / "absent.q3e.enc")
    try:
        with pytest.raises(CommandError) as raised:
            call_command("demo_setup")
    finally:
        set_engine(previous)
    message = str(raised.value)
    assert "\n" not in message and "EMBED_MODEL_PATH" in message and "absent.q3e.enc" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert not Tenant.objects.exists()  # the whole setup is one transaction


def test_a_bundle_that_does_not_open_is_a_one_line_error_too(db, settings, tmp_path):
    from search.engine import set_engine

    (tmp_path / "junk.q3e.enc").write_bytes(b"not a bundle at all")
    previous = set_engine(None)
    settings.EMBED_MODEL_PATH = str(tmp_path / "junk.q3e.enc")
    try:
        with pytest.raises(CommandError) as raised:
            call_command("demo_setup")
    finally:
        set_engine(previous)
    assert "EMBED_MODEL_PATH" in str(raised.value) and "\n" not in str(raised.value)
