"""`llmc batch` and `llmc unbatch`: a JSONL corpus through BatchCompress, and its texts back."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from .._errors import LLMCompressError
from .._results import Progress, ReconstructResult
from ..connect import add_server_arguments, connect
from .batch_files import (
    CorpusError,
    count_lines,
    error_line,
    prepare_resume,
    read_corpus,
    read_out,
    result_line,
)
from .envelopes import MODES, TARGET_RATIO_HELP, target_ratio
from .files import human, open_text_output


def batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.streams < 1:
        print("llmc batch: --streams must be at least 1", file=sys.stderr)
        return 2
    # Broken streams and re-sent items are worth a line on stderr; -v adds when the
    # first re-sent item of each break was answered.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("llmc batch: %(message)s"))
    client_log = logging.getLogger("llmcompress")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO if args.verbose else logging.WARNING)

    src, out = Path(args.input), Path(args.output)
    if out.exists() and out.stat().st_size and not args.resume:
        print(
            f"llmc batch: {out} exists; pass --resume to continue it, or remove it", file=sys.stderr
        )
        return 2
    resume = prepare_resume(out) if args.resume else None
    skip = resume.done if resume else set()
    if resume and (resume.torn_bytes or resume.failed_dropped):
        print(
            f"llmc batch: {out}: cut a torn last line ({resume.torn_bytes} B), "
            f"trying {resume.failed_dropped} failed items again",
            file=sys.stderr,
        )
    bar = tqdm(
        total=count_lines(src),
        initial=len(skip),
        unit="item",
        desc="llmc batch",
        disable=True if args.no_progress else None,  # None: only on a terminal
    )
    last = Progress(0, 0, 0, 0, 0, 0.0)

    def on_progress(p: Progress) -> None:
        nonlocal last
        last = p
        bar.update(1)
        bar.set_postfix(ratio=f"{p.ratio:.2f}x", errors=p.errors, refresh=False)

    failures: list[str] = []  # the first few, for the summary
    try:
        with (
            src.open(encoding="utf-8") as corpus,
            out.open("a", encoding="utf-8") as sink,
            connect(args) as client,
            logging_redirect_tqdm([client_log]),
        ):
            items = read_corpus(corpus, str(src), skip)
            if args.limit is not None:
                items = islice(items, args.limit)
            for answer in client.compress_stream(
                items,
                mode=args.mode,
                target_ratio=args.target_ratio,
                in_order=args.in_order,
                dictionary=args.dictionary,
                on_progress=on_progress,
                streams=args.streams,
            ):
                if answer.result is not None:
                    sink.write(result_line(answer.id, answer.result))
                elif answer.error is not None:
                    sink.write(error_line(answer.id, answer.error))
                    if len(failures) < 10:
                        failures.append(f"{answer.id}: {answer.error}")
                # Flushed per item: a killed run loses at most the line being written.
                sink.flush()
    except CorpusError as exc:
        print(
            f"llmc batch: {exc} (items before it are in {out}; fix it and --resume)",
            file=sys.stderr,
        )
        return 2
    except LLMCompressError:
        print(
            f"llmc batch: stopped after {last.done} items; {out} keeps them, "
            "run again with --resume to finish",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
        client_log.removeHandler(handler)
    if last.resent or last.duplicates:
        print(
            f"llmc batch: {last.resent} items sent again after a stream broke; "
            f"{last.duplicates} answers that came twice written once",
            file=sys.stderr,
        )
    print(
        f"llmc batch: {last.done} items in {last.elapsed_seconds:.1f}s "
        f"({last.items_per_second:.1f} items/s), {len(skip)} already done, "
        f"{last.errors} failed; ratio {last.ratio:.2f}x "
        f"({human(last.original_bytes)} -> {human(last.compressed_bytes)})",
        file=sys.stderr,
    )
    if last.errors:
        for line in failures:
            print(f"  failed {line}", file=sys.stderr)
        if last.errors > len(failures):
            print(
                f'  ... and {last.errors - len(failures)} more (lines with "error" in {out})',
                file=sys.stderr,
            )
        print("  run again with --resume to retry the failed items", file=sys.stderr)
        return 1
    return 0


def unbatch(args: argparse.Namespace) -> int:
    src = Path(args.input)
    written = missing = failed = 0
    with (
        src.open(encoding="utf-8") as lines,
        open_text_output(args.output) as sink,
        connect(args) as client,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        # A bounded window of calls in flight, answered in input order.
        window: deque[tuple[str, Future[ReconstructResult]]] = deque()

        def drain(keep: int) -> None:
            nonlocal written, failed
            while len(window) > keep:
                ident, future = window.popleft()
                try:
                    result = future.result()
                except LLMCompressError as exc:
                    failed += 1
                    print(f"llmc unbatch: {ident}: {exc}", file=sys.stderr)
                    continue
                sink.write(json.dumps({"id": ident, "text": result.text, "exact": result.exact}))
                sink.write("\n")
                written += 1

        try:
            for line in read_out(lines, str(src)):
                if line.envelope is None:
                    missing += 1
                    print(f"llmc unbatch: {line.id}: no envelope ({line.error})", file=sys.stderr)
                    continue
                window.append((line.id, pool.submit(client.reconstruct, line.envelope)))
                drain(args.jobs * 2)
            drain(0)
        except CorpusError as exc:
            print(f"llmc unbatch: {exc}", file=sys.stderr)
            return 2
    print(
        f"llmc unbatch: {written} texts written, {failed} failed, {missing} had no envelope",
        file=sys.stderr,
    )
    return 1 if failed or missing else 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "batch",
        help="compress a JSONL corpus through BatchCompress",
        description='Stream a JSONL corpus ({"id": ..., "text": ...} per line) through '
        "BatchCompress and write one JSON line per item: id, base64 envelope and stats, "
        "or id and error. Exits 1 when any item failed.",
    )
    p.add_argument("input", metavar="IN.jsonl", help="corpus, one JSON object per line")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="results")
    p.add_argument(
        "--mode", choices=MODES, default="default", help='for lines without their own "mode"'
    )
    p.add_argument(
        "--target-ratio",
        type=target_ratio,
        metavar="R",
        help=TARGET_RATIO_HELP + ' (for lines without their own "target_ratio")',
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT: skip ids it holds an envelope for, retry its failed ids, "
        "cut a torn last line",
    )
    p.add_argument(
        "--dictionary",
        metavar="NAME",
        help="a corpus dictionary (name or id) to code with, for lines without their own "
        '"dictionary" (see `llmc dict`)',
    )
    p.add_argument("--in-order", action="store_true", help="write results in input order")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N items this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--streams",
        type=int,
        default=1,
        metavar="K",
        help="K BatchCompress streams at once (default: %(default)s); with --server naming "
        "several replicas they spread over them, and a stream whose replica dies has its "
        "unanswered items sent again on the others",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also say when re-sent items are answered"
    )
    add_server_arguments(p)
    p.set_defaults(func=batch)

    p = commands.add_parser(
        "unbatch",
        help="reconstruct the texts of a `llmc batch` output",
        description="Reconstruct every envelope of a `llmc batch` output and write "
        '{"id": ..., "text": ..., "exact": ...} per line, in the same order.',
    )
    p.add_argument("input", metavar="OUT.jsonl", help="a `llmc batch` output")
    p.add_argument("-o", "--output", metavar="TEXTS.jsonl", help="texts (default: stdout)")
    p.add_argument("--jobs", type=int, default=4, help="calls in flight (default: %(default)s)")
    add_server_arguments(p)
    p.set_defaults(func=unbatch)
