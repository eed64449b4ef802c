"""Run last: nothing the whole test run logged holds a key."""
import base64
import logging

import pytest

from keystore.keys import get_keyring
from tests.conftest import RUN_LOG


@pytest.mark.run_last
def test_logs_of_the_whole_run_contain_no_key():
    logging.getLogger("portal.test").warning("whole-run log check ran")
    assert RUN_LOG in logging.getLogger().handlers, "the run-wide log handler was removed"
    text = "\n".join(RUN_LOG.records)
    assert "whole-run log check ran" in text
    ring = get_keyring()
    for key in filter(None, [ring.model_key, ring.audit_key, *ring.audit_old_keys]):
        for form in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)):
            assert form not in text
