"""`llmc dict`: train, list, export, import and delete corpus dictionaries."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from .._dictionaries import DictionaryInfo
from ..connect import add_server_arguments, connect
from .batch_files import CorpusError, count_lines, read_corpus
from .files import human, read_input, write_output


def _describe(info: DictionaryInfo) -> str:
    primer = f", primer {human(info.primer_bytes)}" if info.primer_bytes else ", no primer"
    return (
        f"{info.name} {info.id[:8]}: zstd {human(info.zstd_bytes)}{primer}, "
        f"{info.samples} samples ({human(info.sample_bytes)})"
    )


def train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    src = Path(args.input)
    total = count_lines(src) if args.limit is None else args.limit
    bar = tqdm(
        total=total,
        unit="sample",
        desc="sending",
        disable=True if args.no_progress else None,  # None: only on a terminal
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    try:
        with src.open(encoding="utf-8") as corpus, connect(args) as client:
            texts: Iterator[str] = (item.text for item in read_corpus(corpus, str(src), set()))
            if args.limit is not None:
                texts = islice(texts, args.limit)

            def sent(_: int) -> None:
                bar.update(1)
                if bar.n == total:
                    bar.set_description("training")

            info = client.train_dictionary(
                args.name, texts, zstd_bytes=args.zstd_bytes, on_sample=sent
            )
    except CorpusError as exc:
        print(f"llmc dict train: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(
        f"trained {_describe(info)} in {info.training_seconds:.2f}s "
        f"({time.perf_counter() - t0:.1f}s in all)",
        file=sys.stderr,
    )
    print(info.id)
    return 0


def listing(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.list_dictionaries()
    if not found:
        print("no dictionaries: train one with `llmc dict train CORPUS.jsonl --name NAME`")
        return 0
    print(f"{'NAME':<20} {'ID':<10} {'ZSTD':>9} {'PRIMER':>9} {'SAMPLES':>8}  CREATED (UTC)")
    for info in found:
        created = datetime.fromtimestamp(info.created_unix, UTC).strftime("%Y-%m-%d %H:%M")
        names = ",".join(info.names) or f"({info.name})"
        print(
            f"{names:<20} {info.id[:8]:<10} {human(info.zstd_bytes):>9} "
            f"{human(info.primer_bytes):>9} {info.samples:>8}  {created}"
        )
    return 0


def export(args: argparse.Namespace) -> int:
    with connect(args) as client:
        data, info = client.export_dictionary(args.dictionary)
    output = args.output or f"{info.name}-{info.id[:8]}.llmcd"
    write_output(output, data)
    where = "stdout" if output == "-" else output
    print(f"exported {_describe(info)} to {where} ({human(len(data))})", file=sys.stderr)
    return 0


def import_(args: argparse.Namespace) -> int:
    data = read_input(args.file)
    with connect(args) as client:
        info = client.import_dictionary(data, name=args.name or "")
    print(f"imported {_describe(info)}", file=sys.stderr)
    return 0


def delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"llmc dict delete: envelopes coded with {args.dictionary} can no longer be "
            "reconstructed once it is deleted (export it first with `llmc dict export` to "
            "keep them readable); pass --yes to delete it",
            file=sys.stderr,
        )
        return 2
    with connect(args) as client:
        info = client.delete_dictionary(args.dictionary)
    print(
        f"deleted {_describe(info)}; envelopes naming {info.id[:8]} can no longer be "
        "reconstructed unless it is imported again",
        file=sys.stderr,
    )
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = commands.add_parser(
        "dict",
        help="corpus dictionaries: train, list, export, import, delete",
        description=(
            "Corpus dictionaries make many small texts of one kind (tickets, chat turns, log "
            "records) smaller: trained on samples of the corpus, then named in compress and "
            "batch with --dictionary. An envelope coded with one needs it to be reconstructed."
        ),
    )
    sub = top.add_subparsers(dest="dict_command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a dictionary from a JSONL corpus (as llmc batch reads)",
        description='Send the texts of CORPUS.jsonl ({"id", "text"} per line) to the '
        "server, which trains a dictionary and stores it under --name. Prints its id.",
    )
    p.add_argument("input", metavar="CORPUS.jsonl", help="samples, one JSON object per line")
    p.add_argument("--name", required=True, help="the name to store it under")
    p.add_argument(
        "--zstd-bytes",
        type=int,
        default=0,
        metavar="N",
        help="the zstd dictionary's size bound (server default: dictionaries.zstd_bytes)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="send only the first N samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_server_arguments(p)
    p.set_defaults(func=train)

    p = sub.add_parser("list", help="list the dictionaries the server holds")
    add_server_arguments(p)
    p.set_defaults(func=listing)

    p = sub.add_parser("export", help="write a dictionary to one file")
    p.add_argument("dictionary", metavar="NAME", help="a name or id")
    p.add_argument("-o", "--output", help="file (default: NAME-ID.llmcd; - for stdout)")
    add_server_arguments(p)
    p.set_defaults(func=export)

    p = sub.add_parser("import", help="store a dictionary file on the server")
    p.add_argument("file", metavar="FILE", help="a file from `llmc dict export`, - for stdin")
    p.add_argument("--name", help="store it under this name instead of the file's")
    add_server_arguments(p)
    p.set_defaults(func=import_)

    p = sub.add_parser(
        "delete",
        help="delete a dictionary (its envelopes can then not be reconstructed)",
    )
    p.add_argument("dictionary", metavar="NAME", help="a name or id")
    p.add_argument("--yes", action="store_true", help="yes, delete it")
    add_server_arguments(p)
    p.set_defaults(func=delete)
