"""Opening the configured model in a worker, and the demo knowledge base."""
import logging
from pathlib import Path

from django.conf import settings

from audit.models import Outcome
from audit.ledger.services import AuditUnavailable, record_event
from keystore.keys import get_keyring
from portal.scope import command_scope
from search.engine import open_engine

logger = logging.getLogger(__name__)
DEMO_KB_NAME = "IT help desk FAQ"
DEMO_KB_FILE = Path(__file__).resolve().parent / "demo_data" / "faq-kb.txt"


def open_configured_engine() -> None:
    """Called in each gunicorn worker after fork. Fails closed the same way for
    every cause (missing file, wrong key, tampered or truncated bundle, a model
    that will not build): the worker stays up and serves no search (readyz says
    not ready), and a `model.open` failure naming the reason class is audited.
    Nothing raised here may stop the worker: gunicorn would halt the server
    ("Worker failed to boot") with no record of why."""
    import os

    context = {"auth_method": "system", "user_agent": f"worker pid {os.getpid()}"}
    keyring = get_keyring()
    bundle = Path(settings.EMBED_MODEL_PATH).name
    try:
        engine = open_engine(settings.EMBED_MODEL_PATH, keyring.model_key, settings.EMBED_DEVICE)
    except Exception as exc:  # noqa: BLE001  every failure fails closed, audited
        # Bundle and engine messages name key ids, never key material.
        logger.error("embedding model not opened (%s): %s", exc.__class__.__name__, exc)
        _record_model_open(outcome=Outcome.FAILURE, context=context, resource_id=bundle,
                           detail={"reason": exc.__class__.__name__, "error": str(exc)[:500],
                                   "key_id": keyring.model_key_id})
        return
    _record_model_open(outcome=Outcome.SUCCESS, context=context, resource_id=bundle, model_id=engine.model_id,
                       detail={"key_id": engine.key_id, "device": engine.device, "backend": engine.backend,
                               "dimensions": engine.dimensions})


def _record_model_open(*, outcome, context, resource_id, detail, model_id="") -> None:
    try:
        record_event(action="model.open", outcome=outcome, context=context, model_id=model_id,
                     resource_type="model_bundle", resource_id=resource_id, detail=detail)
    except AuditUnavailable:
        # record_event has logged it; searches are refused while the audit
        # cannot be written, and readyz reports the audit store.
        pass


def demo_knowledge_base(tenants) -> list[str]:
    """The demo FAQ in acme, embedded with the served model (opened here if needed)."""
    from portal.demo import DemoSetupError
    from search.engine import get_engine, EngineUnavailable
    from search.models import KnowledgeBase
    from search.parsing import parse_entries
    from search.services import documents_import, kb_create

    acme = tenants["acme"]
    if KnowledgeBase.objects.filter(tenant=acme, name=DEMO_KB_NAME).exists():
        return []
    try:
        get_engine()
    except EngineUnavailable:
        path = Path(settings.EMBED_MODEL_PATH)
        if not path.is_file():
            raise DemoSetupError(f"no model bundle at EMBED_MODEL_PATH={path}: seal one with "
                                 "`manage.py model_seal SRC OUT` or point EMBED_MODEL_PATH at it") from None
        try:
            open_engine(path, get_keyring().model_key, "cpu")
        except Exception as exc:  # noqa: BLE001  wrong key, tampered bundle…: one line, no traceback
            raise DemoSetupError(f"the model bundle at EMBED_MODEL_PATH={path} did not open: {exc}") from None
    scope = command_scope("demo_setup", tenant=acme)
    kb = kb_create(scope=scope, name=DEMO_KB_NAME, description="60 questions staff ask the IT desk")
    entries = parse_entries(DEMO_KB_FILE.read_bytes(), "txt", max_entries=10_000, max_chars=10_000)
    result = documents_import(scope=scope, kb=kb, entries=entries, source=DEMO_KB_FILE.name)
    return [f"created knowledge base {DEMO_KB_NAME!r} in acme with {result.added} entries"]
