from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from audit.ledger.services import AuditUnavailable
from keystore.keys import get_keyring
from portal.cli import scope_from_options
from search.engine import EngineError, EngineUnavailable, get_engine, open_engine
from search.parsing import ImportFileError, detect_format, parse_entries
from search.selectors import kb_by_reference
from search.services import ModelMismatch, SearchInputError, documents_import, kb_create, record_refusal


class Command(BaseCommand):
    help = "Import a text (one entry a line), CSV or JSONL file into a knowledge base, embedding in batches."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--kb", required=True, help="knowledge base name (created if missing)")
        parser.add_argument("--format", choices=["txt", "csv", "jsonl"], help="default: from the file name")
        parser.add_argument("file")

    def handle(self, *args, tenant, kb, file, format=None, **options):
        scope = scope_from_options("kb_import", tenant=tenant)
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"{file}: no such file")
        if path.stat().st_size > settings.KB_MAX_UPLOAD_BYTES * 16:
            raise CommandError(f"{file} is larger than {settings.KB_MAX_UPLOAD_BYTES * 16} bytes")
        try:
            try:
                entries = parse_entries(path.read_bytes(), format or detect_format(path.name),
                                        max_entries=settings.KB_MAX_IMPORT_ENTRIES,
                                        max_chars=settings.KB_MAX_DOCUMENT_CHARS)
            except ImportFileError as exc:
                # Refused before any knowledge base is made: recorded against the name asked for.
                existing = kb_by_reference(scope, kb)
                record_refusal(scope, "doc.import", exc,
                               resource_type="knowledge_base", resource_id=str(existing.pk) if existing else "",
                               kb_id=existing.pk if existing else None, kb_name=kb[:200],
                               detail={"source": path.name[:200]})
                raise
            try:
                get_engine()
            except EngineUnavailable:
                open_engine(settings.EMBED_MODEL_PATH, get_keyring().model_key, settings.EMBED_DEVICE)
            target = kb_by_reference(scope, kb) or kb_create(scope=scope, name=kb)
            with tqdm(total=len(entries), unit="entry", desc="embedding", disable=None) as bar:
                def progress(done, total):
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                result = documents_import(scope=scope, kb=target, entries=entries, source=path.name,
                                          progress=progress)
        except (ImportFileError, SearchInputError, ModelMismatch, EngineError, AuditUnavailable) as exc:
            raise CommandError(str(exc)) from None
        def counted(n: int, one: str, many: str) -> str:
            return f"{n} {one if n == 1 else many}"

        self.stdout.write(f"{counted(result.added, 'entry', 'entries')} added to {kb!r} ({tenant}), "
                          f"{counted(result.skipped, 'duplicate', 'duplicates')} skipped, {result.truncated} truncated")
