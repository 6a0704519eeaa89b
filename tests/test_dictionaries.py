"""Corpus dictionaries on the real aio server: train, code with, export/import, errors.

The corpus is the Debian changelog items in `corpus/debian-changelogs/` (one kind of
short record), trained on the `train` split and coded on the `test` split (other source
packages).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App
from llmcompress_server.core.config import DictionariesConfig
from llmcompress_server.core.dictionary import Dictionary
from llmcompress_server.flow.dictionaries import DiskDictionaries, StoredDictionary

from .conftest import CORPUS, RedisServer, StartServer

Stub = pb_grpc.CompressionServiceStub
ITEMS = CORPUS.parent / "debian-changelogs" / "changelog-items.jsonl"


def changelog_items(split: str) -> list[str]:
    rows = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows if r["split"] == split]


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    return changelog_items("train")


@pytest.fixture(scope="module")
def test_texts() -> list[str]:
    return changelog_items("test")[:300]


def requests(
    name: str, samples: list[str], per_message: int = 200, **first: int
) -> Iterator[pb.TrainDictionaryRequest]:
    yield pb.TrainDictionaryRequest(name=name, samples=samples[:per_message], **first)
    for i in range(per_message, len(samples), per_message):
        yield pb.TrainDictionaryRequest(samples=samples[i : i + per_message])


async def train(stub: Stub, name: str, samples: list[str], **first: int) -> pb.DictionaryInfo:
    resp = await stub.TrainDictionary(requests(name, samples, **first))
    return resp.dictionary


async def status_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def open_stub(app: App) -> tuple[grpc.aio.Channel, Stub]:
    channel = grpc.aio.insecure_channel(app.address)
    return channel, pb_grpc.CompressionServiceStub(channel)


async def test_zstd_with_a_dictionary_is_exact_and_smaller(
    stub: Stub, train_texts: list[str], test_texts: list[str]
) -> None:
    info = await train(stub, "changelog", train_texts)
    assert len(info.id) == 64 and info.zstd_bytes > 16_000
    assert info.samples == len(train_texts) and list(info.names) == ["changelog"]
    plain = with_dict = original = 0
    for text in test_texts:
        a = await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
        b = await stub.Compress(
            pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary="changelog")
        )
        assert b.stats.dictionary == info.id[:8] and not a.stats.dictionary
        env = pb.Envelope.FromString(b.envelope)
        assert f"{env.dictionary:08x}" == info.id[:8]
        for resp in (a, b):
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
            assert back.text == text and back.exact
        original += len(text.encode("utf-8"))
        plain += len(a.envelope)
        with_dict += len(b.envelope)
    # The same texts, envelope bytes with and without (the bench measures the figure).
    print(f"changelog items: plain {original / plain:.3f}x, dictionary {original / with_dict:.3f}x")
    assert with_dict < plain * 0.8
    # Named by id (its first 8 hex digits) as well as by name: the same envelope.
    by_id = await stub.Compress(
        pb.CompressRequest(text=test_texts[0], mode=pb.MODE_ZSTD, dictionary=info.id[:8])
    )
    by_name = await stub.Compress(
        pb.CompressRequest(text=test_texts[0], mode=pb.MODE_ZSTD, dictionary="changelog")
    )
    assert by_id.envelope == by_name.envelope


async def test_two_dictionaries_are_never_mixed(
    start_server: StartServer, train_texts: list[str], test_texts: list[str]
) -> None:
    app = await start_server()
    channel, stub = await open_stub(app)
    async with channel:
        first = await train(stub, "first", train_texts[: len(train_texts) // 2])
        second = await train(stub, "second", train_texts[len(train_texts) // 2 :])
        assert first.id != second.id
        text = test_texts[0]
        envelopes = {}
        for name in ("first", "second"):
            resp = await stub.Compress(
                pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary=name)
            )
            envelopes[name] = resp.envelope
        assert envelopes["first"] != envelopes["second"]
        for envelope in envelopes.values():
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=envelope))
            assert back.text == text
        # A server that holds only the second refuses the first's envelope, naming it.
        exported = await stub.ExportDictionary(pb.ExportDictionaryRequest(dictionary="second"))
    other = await start_server()
    channel, stub = await open_stub(other)
    async with channel:
        await stub.ImportDictionary(pb.ImportDictionaryRequest(file=exported.file))
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=envelopes["second"]))
        assert back.text == text
        err = await status_of(stub.Reconstruct(pb.ReconstructRequest(envelope=envelopes["first"])))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert first.id[:8] in (err.details() or "")
        assert "llmc dict import" in (err.details() or "")


async def test_the_cache_key_holds_the_dictionary(stub: Stub, train_texts: list[str]) -> None:
    await train(stub, "a", train_texts[:400])
    await train(stub, "b", train_texts[400:800])
    text = "\n".join(train_texts[900:1000])  # long enough to be cached (cache.zstd_min_bytes)
    assert len(text.encode()) >= 4096
    seen = []
    for name in ("", "a", "b", "a"):
        resp = await stub.Compress(
            pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary=name)
        )
        seen.append((resp.envelope, resp.stats.cache_hit, resp.stats.dictionary))
    assert [hit for _, hit, _ in seen] == [False, False, False, True]
    assert len({env for env, _, _ in seen}) == 3
    assert seen[1] == (seen[3][0], False, seen[3][2])


async def test_batch_items_take_the_stream_default_or_their_own(
    stub: Stub, train_texts: list[str], test_texts: list[str]
) -> None:
    info = await train(stub, "stream", train_texts)

    def items() -> Iterator[pb.BatchCompressRequest]:
        for i, text in enumerate(test_texts[:60]):
            req = pb.CompressRequest(text=text, mode=pb.MODE_ZSTD)
            if i % 3 == 1:
                req.dictionary = "no-such-dictionary"
            yield pb.BatchCompressRequest(
                id=str(i), request=req, dictionary="stream" if i == 0 else ""
            )

    answers = {r.id: r async for r in stub.BatchCompress(items())}
    assert sorted(answers, key=int) == [str(i) for i in range(60)]
    for i, text in enumerate(test_texts[:60]):
        answer = answers[str(i)]
        if i % 3 == 1:
            assert answer.error.code == grpc.StatusCode.NOT_FOUND.value[0]
            assert "no-such-dictionary" in answer.error.message
            continue
        assert answer.result.stats.dictionary == info.id[:8]
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=answer.result.envelope))
        assert back.text == text


async def test_errors_have_their_status_and_store_nothing(
    start_server: StartServer, train_texts: list[str]
) -> None:
    app = await start_server(
        dictionaries={"max_training_bytes": 64 * 1024},
        compression={"max_text_bytes": 4096},
    )
    channel, stub = await open_stub(app)
    async with channel:
        unknown = await status_of(
            stub.Compress(pb.CompressRequest(text="hello", mode=pb.MODE_ZSTD, dictionary="nope"))
        )
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert "llmc dict train" in (unknown.details() or "")

        few = await status_of(train(stub, "few", train_texts[:5]))
        assert few.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at least 16" in (few.details() or "")

        large = await status_of(train(stub, "large", [*train_texts[:20], "x" * 5000]))
        assert large.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sample 21 is 5000 bytes" in (large.details() or "")

        # Past dictionaries.max_training_bytes the upload is refused as it arrives: the
        # stream below is never read to its end.
        sent = 0

        def endless() -> Iterator[pb.TrainDictionaryRequest]:
            nonlocal sent
            yield pb.TrainDictionaryRequest(name="endless")
            while sent < 10_000:
                sent += 1
                yield pb.TrainDictionaryRequest(samples=train_texts[:50])

        upload = await status_of(stub.TrainDictionary(endless()))
        assert upload.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dictionaries.max_training_bytes" in (upload.details() or "")
        assert sent < 10_000

        for name in ("no spaces", "..", ".hidden", "a/b", "x" * 65):
            bad_name = await status_of(train(stub, name, train_texts[:100]))
            assert bad_name.code() == grpc.StatusCode.INVALID_ARGUMENT, name

        listing = await stub.ListDictionaries(pb.ListDictionariesRequest())
        assert list(listing.dictionaries) == []
        assert not list(app.config.dictionaries.directory.glob("*.llmcd"))


async def test_a_file_that_does_not_match_its_id_is_data_loss(
    stub: Stub, server: App, train_texts: list[str]
) -> None:
    await train(stub, "good", train_texts[:500])
    exported = await stub.ExportDictionary(pb.ExportDictionaryRequest(dictionary="good"))
    file = pb.DictionaryFile.FromString(exported.file)
    file.zstd = file.zstd[:-1] + bytes([file.zstd[-1] ^ 1])
    err = await status_of(
        stub.ImportDictionary(pb.ImportDictionaryRequest(file=file.SerializeToString()))
    )
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert exported.info.id[:8] in (err.details() or "")
    garbage = await status_of(stub.ImportDictionary(pb.ImportDictionaryRequest(file=b"\xff" * 64)))
    assert garbage.code() == grpc.StatusCode.DATA_LOSS
    listing = await stub.ListDictionaries(pb.ListDictionariesRequest())
    assert [d.id for d in listing.dictionaries] == [exported.info.id]


async def test_an_oversized_import_is_refused_before_it_is_read(
    start_server: StartServer,
) -> None:
    app = await start_server(security={"max_message_bytes": 64 * 1024})
    channel, stub = await open_stub(app)
    async with channel:
        err = await status_of(
            stub.ImportDictionary(pb.ImportDictionaryRequest(file=b"\0" * (256 * 1024)))
        )
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_delete_is_explicit_and_says_what_it_breaks(
    stub: Stub, train_texts: list[str]
) -> None:
    info = await train(stub, "doomed", train_texts[:500])
    text = train_texts[600]
    kept = await stub.Compress(
        pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary="doomed")
    )
    deleted = await stub.DeleteDictionary(pb.DeleteDictionaryRequest(dictionary="doomed"))
    assert deleted.deleted.id == info.id and list(deleted.deleted.names) == ["doomed"]
    gone = await status_of(
        stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary="doomed"))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    lost = await status_of(stub.Reconstruct(pb.ReconstructRequest(envelope=kept.envelope)))
    assert lost.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.id[:8] in (lost.details() or "")


async def test_dictionaries_survive_a_restart_and_a_name_follows_its_latest(
    start_server: StartServer, train_texts: list[str], tmp_path: Path
) -> None:
    folder = {"dictionaries": {"path": str(tmp_path / "dicts")}}
    app = await start_server(**folder)
    channel, stub = await open_stub(app)
    async with channel:
        old = await train(stub, "notes", train_texts[:400])
        new = await train(stub, "notes", train_texts[400:800])
        text = train_texts[900]
        resp = await stub.Compress(
            pb.CompressRequest(text=text, mode=pb.MODE_ZSTD, dictionary="notes")
        )
        assert resp.stats.dictionary == new.id[:8]
    await app.stop(0)
    again = await start_server(**folder)
    channel, stub = await open_stub(again)
    async with channel:
        listing = await stub.ListDictionaries(pb.ListDictionariesRequest())
        by_id = {d.id: d for d in listing.dictionaries}
        assert set(by_id) == {old.id, new.id}
        assert list(by_id[new.id].names) == ["notes"] and list(by_id[old.id].names) == []
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
        assert back.text == text


def test_only_whole_valid_files_are_listed(tmp_path: Path) -> None:
    """What a killed writer can leave: a temporary file (the write is renamed into place
    only when whole), and what a copy gone wrong can leave: a truncated or corrupted file.
    None of them is listed; the temporary file is removed."""
    disk = DiskDictionaries(tmp_path)
    whole = StoredDictionary(Dictionary(zstd=b"z" * 2000), name="whole", created_unix=time.time())
    disk.save(whole, "whole")
    data = whole.to_file()
    (tmp_path / f".tmp-{whole.hex}.llmcd-123-abc").write_bytes(data[:700])
    other = StoredDictionary(Dictionary(zstd=b"y" * 2000), name="cut")
    (tmp_path / f"{other.hex}.llmcd").write_bytes(other.to_file()[:900])
    wrong = StoredDictionary(Dictionary(zstd=b"x" * 2000), name="wrong")
    (tmp_path / f"{whole.hex[:-1]}0.llmcd").write_bytes(wrong.to_file())
    found, names = disk.load()
    assert [s.hex for s in found] == [whole.hex]
    assert names == {"whole": whole.hex}
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_default_folder_is_the_users_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert DictionariesConfig().directory == Path("/srv/data/llmcompress/dictionaries")


async def test_llmc_dict_commands(
    server: App, train_texts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmcompress.cli.main import main as llmc

    def run(*args: str) -> int:
        return llmc([*args, "--server", server.address])

    corpus = tmp_path / "notes.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(train_texts)),
        encoding="utf-8",
    )
    assert await asyncio.to_thread(run, "dict", "list") == 0
    assert "no dictionaries" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "dict", "train", str(corpus), "--name", "notes") == 0
    out = capsys.readouterr()
    (dictionary_id,) = out.out.split()
    assert "trained notes" in out.err and len(dictionary_id) == 64
    assert await asyncio.to_thread(run, "dict", "list") == 0
    assert dictionary_id[:8] in capsys.readouterr().out
    # Deleting asks for --yes and says what it breaks.
    assert await asyncio.to_thread(run, "dict", "delete", "notes") == 2
    assert "can no longer be reconstructed" in capsys.readouterr().err
    assert await asyncio.to_thread(run, "dict", "delete", "notes", "--yes") == 0
    assert await asyncio.to_thread(run, "dict", "export", "notes", "-o", str(tmp_path / "x")) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


@pytest.mark.model
@pytest.mark.parametrize("width", [1, 4])
async def test_a_primed_lossless_item_of_a_batch_decodes_alone(
    start_server: StartServer, train_texts: list[str], test_texts: list[str], width: int
) -> None:
    """LOSSLESS items coded with a dictionary's primer inside one BatchCompress (several at
    once in the engine at width 4) each reconstruct exactly on their own, on this server
    and on a server of the other width that imported the dictionary."""
    embedded = {"coding_width": width, "coding_narrow_when_idle": False}
    app = await start_server(model={"embedded": embedded}, dictionaries={"primer_tokens": 128})
    texts = test_texts[:6]
    channel, stub = await open_stub(app)
    async with channel:
        info = await train(stub, "primed", train_texts)
        assert info.primer_bytes > 0

        def items() -> Iterator[pb.BatchCompressRequest]:
            for i, text in enumerate(texts):
                req = pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, dictionary="primed")
                yield pb.BatchCompressRequest(id=str(i), request=req)

        answers = {r.id: r.result async for r in stub.BatchCompress(items())}
        plain = [
            await stub.Compress(pb.CompressRequest(text=t, mode=pb.MODE_LOSSLESS)) for t in texts
        ]
        for i, text in enumerate(texts):
            stats = answers[str(i)].stats
            assert stats.mode == pb.MODE_LOSSLESS and stats.dictionary == info.id[:8], stats
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=answers[str(i)].envelope))
            assert back.text == text and back.exact
        primed_bytes = sum(len(a.envelope) for a in answers.values())
        plain_bytes = sum(len(p.envelope) for p in plain)
        # Reported, not asserted: on ~140-byte records the primer's saving is about the 5
        # bytes naming the dictionary costs (bench.dictionaries measures it).
        print(f"width {width}: LOSSLESS {plain_bytes} B, with the primer {primed_bytes} B")
        exported = await stub.ExportDictionary(pb.ExportDictionaryRequest(dictionary="primed"))
    other_width = {"coding_width": 5 - width, "coding_narrow_when_idle": False}
    other = await start_server(model={"embedded": other_width})
    channel, stub = await open_stub(other)
    async with channel:
        await stub.ImportDictionary(pb.ImportDictionaryRequest(file=exported.file))
        for i, text in enumerate(texts):
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=answers[str(i)].envelope))
            assert back.text == text


async def test_a_dictionary_the_shared_redis_cannot_take_is_unavailable_and_says_so(
    start_server: StartServer, redis_server: RedisServer, train_texts: list[str]
) -> None:
    app = await start_server(cache={"redis_url": redis_server.url})
    channel, stub = await open_stub(app)
    async with channel:
        info = await train(stub, "shared", train_texts[:300])
        redis_server.kill()
        err = await status_of(train(stub, "later", train_texts[300:600]))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "import it again when Redis is back" in (err.details() or "")
        gone = await status_of(
            stub.DeleteDictionary(pb.DeleteDictionaryRequest(dictionary=info.id))
        )
        assert gone.code() == grpc.StatusCode.UNAVAILABLE
        assert "was not deleted" in (gone.details() or "")
