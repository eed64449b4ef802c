"""manage.py model_seal SRC OUT | model_seal --legacy-cbc IN OUT"""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from keystore.bundle import DEFAULT_CHUNK_SIZE, BundleError, check_languages, check_relevance_floor
from keystore.keys import MODEL_KEY, get_keyring
from search.sealing import missing_model_files


def require_model_key() -> bytes:
    """The process's model key, or a CommandError that says how to provide it."""
    ring = get_keyring()
    if ring.model_key is None:
        reasons = [e for e in ring.errors if MODEL_KEY in e] or [f"{MODEL_KEY} is not set"]
        raise CommandError(f"no model key: {'; '.join(reasons)}")
    return ring.model_key


class Command(BaseCommand):
    help = (
        "Seal a model folder (config, tokenizer, pooling files, safetensors or pytorch_model.bin weights) "
        "into one authenticated bundle, or re-seal a legacy AES-CBC file with --legacy-cbc. "
        "The encoder is also exported, in memory, to an ONNX graph sealed in the same bundle, which CPU "
        "workers run with ONNX Runtime (--no-onnx leaves it out; models over ONNX's 2 GB limit go without). "
        f"The key is {MODEL_KEY} (or {MODEL_KEY}_FILE)."
    )

    def add_arguments(self, parser):
        parser.add_argument("src", help="the model folder, or with --legacy-cbc the legacy .q3e.enc file")
        parser.add_argument("out", help="the bundle to write")
        parser.add_argument("--legacy-cbc", action="store_true", help="SRC is a legacy AES-256-CBC file")
        parser.add_argument(
            "--config-dir", help="with --legacy-cbc: a model folder whose config and tokenizer files to include"
        )
        parser.add_argument("--model-id", help="the name recorded in the bundle (default: from the folder)")
        parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="plaintext bytes per chunk")
        parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
        parser.add_argument(
            "--languages", default="",
            help="ISO 639-1 codes of the languages the model reads, comma-separated (en or en,zh); "
                 "the portal shows them and warns when a query is written in another script",
        )
        parser.add_argument(
            "--relevance-floor", type=float, default=None, metavar="SCORE",
            help="cosine from 0 to 1 under which a hit is shown as a weak match, calibrated on this model "
                 "(all-MiniLM-L6-v2 on the demo FAQ: 0.25); a knowledge base's own floor overrides it",
        )
        parser.add_argument(
            "--no-onnx", action="store_true",
            help="do not export the encoder to ONNX: the bundle then runs on torch everywhere "
                 "(EMBED_BACKEND=auto picks ONNX Runtime on the CPU when the bundle has the graph)",
        )

    def handle(self, *args, src, out, legacy_cbc, config_dir, model_id, chunk_size, force, verbosity,
               languages, relevance_floor, no_onnx, **options):
        from search.legacy import reseal_legacy_cbc, seal_model_folder  # torch: only when sealing

        try:
            metadata = {"languages": check_languages(c for c in languages.split(",") if c.strip()),
                        "relevance_floor": check_relevance_floor(relevance_floor)}
        except BundleError as exc:
            raise CommandError(str(exc)) from None
        key = require_model_key()
        if Path(out).exists() and not force:
            raise CommandError(f"{out} already exists; pass --force to replace it")
        if not Path(out).resolve().parent.is_dir():
            raise CommandError(f"the folder of {out} does not exist")
        if legacy_cbc and not Path(src).is_file():
            raise CommandError(f"{src} is not a file")
        if not legacy_cbc and not Path(src).is_dir():
            raise CommandError(f"{src} is not a model folder")
        if not legacy_cbc:
            missing = missing_model_files(Path(src))
            if missing:
                raise CommandError(f"{src} is not a complete model folder: missing {', '.join(missing)}")
        if config_dir and not legacy_cbc:
            raise CommandError("--config-dir only goes with --legacy-cbc")

        if not no_onnx and verbosity:
            # The export comes before the first sealed byte and takes a while (about 20 s for MiniLM).
            self.stdout.write("exporting the encoder to ONNX for the CPU backend (--no-onnx skips it)…")
        with tqdm(unit="B", unit_scale=True, desc="sealing", disable=verbosity == 0) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            common = {"model_id": model_id, "chunk_size": chunk_size, "progress": progress, "onnx": not no_onnx,
                      **metadata}
            try:
                if legacy_cbc:
                    header = reseal_legacy_cbc(src, out, key, config_dir=config_dir, **common)
                else:
                    header = seal_model_folder(src, out, key, **common)
            except (BundleError, OSError) as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(
            f"sealed {out}: {header['plaintext_size']} bytes in {header['chunk_count']} chunks, key {header['key_id']}"
        )
        self.stdout.write(
            f"languages: {','.join(metadata['languages']) or 'not stated'}; relevance floor: "
            f"{'not calibrated' if metadata['relevance_floor'] is None else metadata['relevance_floor']} "
            "(sealed: model_inspect does not show them)"
        )
        self.stdout.write(f"ONNX graph: {header['onnx']}")
