#!/usr/bin/env python3
"""Build a "many short records of one kind" corpus from Debian bookworm changelogs.

Downloads a FIXED list of Debian bookworm binary packages with `apt-get download`,
takes each one's Debian changelog (`usr/share/doc/<pkg>/changelog.Debian.gz`, or
`changelog.gz` for Debian-native packages, whose changelog is the Debian one), parses
it into version entries and writes three JSONL corpora in the project's batch format
(`{"id", "source", "text"}` per line, plus `"split"` and `"version"`):

  changelog-entries.jsonl  one whole version entry (header, body, trailer) a line
  changelog-items.jsonl    one top-level "  * ..." bullet with its continuation lines
                           (60-400 UTF-8 bytes), dedented by the bullet's indent
  changelog-medium.jsonl   consecutive whole entries of one package joined until
                           >= 2.5 KB (never across packages)

Every record carries the train/test split of its source package (sha256 of the
source package name read as an integer: odd -> train, even -> test), so a dictionary
trained on `train` never saw a `test` document. (Odd rather than even was picked so
that the larger half trains: with even -> train, train held 35 packages / 0.89 MB of
entries and test 43 / 1.59 MB.)

Reproducibility: `packages.lock.json` pins each package's exact version and the
sha256 of the changelog used. With the lock present, the script downloads exactly
those versions and fails if a changelog's digest differs. Debian's mirrors keep only
the current version of a bookworm package, so a pinned version can disappear after
a point release or security update; then rerun with `--allow-newer` (takes the
current candidate, reports what changed, leaves the lock alone) or `--update-lock`.

Stdlib only. Needs apt-get and dpkg-deb (Debian/Ubuntu), root for `apt-get update`.

    python3 build.py                 # rebuild from the lock
    python3 build.py --update-lock   # re-pin to today's bookworm versions
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (binary package to download, its source package). One binary per source; the
# binary is one that ships the changelog as a regular file (not a doc-dir symlink).
PACKAGES: list[tuple[str, str]] = [
    ("acl", "acl"),
    ("adduser", "adduser"),
    ("apache2", "apache2"),
    ("apparmor", "apparmor"),
    ("apt", "apt"),
    ("attr", "attr"),
    ("base-files", "base-files"),
    ("bind9-host", "bind9"),
    ("binutils", "binutils"),
    ("bison", "bison"),
    ("bzip2", "bzip2"),
    ("ca-certificates", "ca-certificates"),
    ("cmake", "cmake"),
    ("coreutils", "coreutils"),
    ("cron", "cron"),
    ("cryptsetup-bin", "cryptsetup"),
    ("curl", "curl"),
    ("dash", "dash"),
    ("dbus", "dbus"),
    ("debhelper", "debhelper"),
    ("debianutils", "debianutils"),
    ("devscripts", "devscripts"),
    ("dosfstools", "dosfstools"),
    ("dpkg", "dpkg"),
    ("e2fsprogs", "e2fsprogs"),
    ("exim4-base", "exim4"),
    ("gcc-12-base", "gcc-12"),
    ("gdb", "gdb"),
    ("git", "git"),
    ("gnupg", "gnupg2"),
    ("grub-common", "grub2"),
    ("gzip", "gzip"),
    ("htop", "htop"),
    ("initramfs-tools", "initramfs-tools"),
    ("iproute2", "iproute2"),
    ("iptables", "iptables"),
    ("libc6", "glibc"),
    ("libexpat1", "expat"),
    ("libgcrypt20", "libgcrypt20"),
    ("libglib2.0-0", "glib2.0"),
    ("libgnutls30", "gnutls28"),
    ("libkrb5-3", "krb5"),
    ("libldap-2.5-0", "openldap"),
    ("liblz4-1", "lz4"),
    ("libpam-modules", "pam"),
    ("libxml2", "libxml2"),
    ("libzstd1", "libzstd"),
    ("lintian", "lintian"),
    ("logrotate", "logrotate"),
    ("make", "make-dfsg"),
    ("man-db", "man-db"),
    ("mariadb-common", "mariadb"),
    ("mawk", "mawk"),
    ("nano", "nano"),
    ("ncurses-base", "ncurses"),
    ("nginx-common", "nginx"),
    ("openssh-client", "openssh"),
    ("openssl", "openssl"),
    ("passwd", "shadow"),
    ("perl-base", "perl"),
    ("php8.2-common", "php8.2"),
    ("postfix", "postfix"),
    ("postgresql-15", "postgresql-15"),
    ("procps", "procps"),
    ("python3.11-minimal", "python3.11"),
    ("redis-tools", "redis"),
    ("rsync", "rsync"),
    ("rsyslog", "rsyslog"),
    ("samba-common", "samba"),
    ("sqlite3", "sqlite3"),
    ("sudo", "sudo"),
    ("systemd", "systemd"),
    ("tmux", "tmux"),
    ("tzdata", "tzdata"),
    ("util-linux", "util-linux"),
    ("vim-common", "vim"),
    ("xz-utils", "xz-utils"),
    ("zsh", "zsh"),
]

# Newest entries of one package are kept until this many bytes of entry text, so
# that a few huge changelogs (dpkg's is 750 KB, binutils' 240 KB) don't dominate.
MAX_BYTES_PER_PACKAGE = 128 * 1024
ITEM_MIN, ITEM_MAX = 60, 400  # UTF-8 bytes kept for changelog-items
MEDIUM_TARGET = 2560  # changelog-medium: join entries until >= this
MEDIUM_TAIL_MERGE = MEDIUM_TARGET // 2  # a package's last chunk below this joins the previous

# deb-changelog(5): "package (version) distribution(s); urgency=..." and
# " -- maintainer name <email address>[two spaces]date".
HEADER_RE = re.compile(r"^(\w[-+0-9a-z.]*) \(([^() \t]+)\)((?:\s+[-+0-9a-z.]+)+);(.*)$", re.I)
TRAILER_RE = re.compile(r"^ -- (.*) <(.*)>(  ?)(.*)$")
BULLET_RE = re.compile(r"^( {1,3})\* ")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_of(source: str) -> str:
    """train if sha256(source name), read as an integer, is odd, else test."""
    return "train" if int(sha256(source.encode()), 16) % 2 == 1 else "test"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, timeout=kw.pop("timeout", 900), **kw)


# --------------------------------------------------------------------------- fetch


@dataclass
class Package:
    binary: str
    source: str
    deb_version: str = ""
    deb_sha256: str = ""
    deb_filename: str = ""
    changelog_member: str = ""
    changelog_gz_sha256: str = ""
    changelog_sha256: str = ""
    changelog_bytes: int = 0
    changelog_top_version: str = ""
    trimmed_by_debhelper: bool = False
    copyright_member: str = ""
    copyright_licenses: list[str] = field(default_factory=list)
    text: str = ""
    non_utf8_lines: int = 0


def apt_download(specs: list[str], dest: Path) -> None:
    """`apt-get download` all specs into dest; on failure, one at a time to name the culprit."""
    try:
        run(
            ["apt-get", "download", "-q", *specs],
            cwd=dest,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return
    except subprocess.CalledProcessError:
        pass
    bad = []
    for spec in specs:
        if any(dest.glob(f"{spec.split('=')[0]}_*.deb")):
            continue
        r = subprocess.run(
            ["apt-get", "download", "-q", spec],
            cwd=dest,
            timeout=600,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if r.returncode:
            bad.append((spec, r.stderr.strip().splitlines()[-1:] or [""]))
    if bad:
        msg = "\n".join(f"  {s}: {e[0]}" for s, e in bad)
        raise SystemExit(
            f"apt-get download failed for:\n{msg}\n"
            "A pinned version may have been superseded in bookworm (mirrors keep only the "
            "current one): rerun with --allow-newer to take the current version, or "
            "--update-lock to re-pin."
        )


def deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True).stdout.strip()


def licenses_of(copyright_text: str) -> list[str]:
    """Short licence names of a DEP-5 copyright file ('License: X' lines), in order seen."""
    seen: list[str] = []
    for line in copyright_text.splitlines():
        m = re.match(r"^License:\s*(\S.*)$", line)
        if m and m.group(1).strip() not in seen:
            seen.append(m.group(1).strip())
    return seen[:12]


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8, with latin-1 for the odd old line that is not; returns (text, such lines)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        lines, bad = [], 0
        for line in raw.split(b"\n"):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(line.decode("latin-1"))
                bad += 1
        return "\n".join(lines), bad


def read_deb(pkg: Package, deb: Path) -> None:
    pkg.deb_filename = deb.name
    pkg.deb_sha256 = sha256(deb.read_bytes())
    pkg.deb_version = deb_field(deb, "Version")
    src = deb_field(deb, "Source").split(" ")[0] or deb_field(deb, "Package")
    if src != pkg.source:
        raise SystemExit(f"{pkg.binary}: source is {src!r}, the list says {pkg.source!r}")
    tar_bytes = run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True).stdout
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf.getmembers():
            name = m.name.removeprefix("./")
            if re.fullmatch(
                r"usr/share/doc/[^/]+/(changelog\.Debian\.gz|changelog\.gz|copyright)", name
            ):
                data = tf.extractfile(m).read() if m.isfile() else None
                members[name] = (m, data)
    doc = f"usr/share/doc/{pkg.binary}"
    chosen = None
    for cand in (f"{doc}/changelog.Debian.gz", f"{doc}/changelog.gz"):
        if cand in members and members[cand][1] is not None:
            raw = gzip.decompress(members[cand][1])
            first = raw.split(b"\n", 1)[0].decode("utf-8", "replace")
            if HEADER_RE.match(first):
                chosen = (cand, members[cand][1], raw)
                break
    if chosen is None:
        raise SystemExit(f"{pkg.binary}: no Debian changelog as a regular file under /{doc}")
    pkg.changelog_member, gz, raw = chosen
    pkg.changelog_member = "/" + pkg.changelog_member
    pkg.changelog_gz_sha256 = sha256(gz)
    pkg.changelog_sha256 = sha256(raw)
    pkg.changelog_bytes = len(raw)
    pkg.text, pkg.non_utf8_lines = decode(raw)
    pkg.changelog_top_version = HEADER_RE.match(pkg.text.split("\n", 1)[0]).group(2)
    pkg.trimmed_by_debhelper = "# Older entries have been removed from this changelog." in pkg.text
    cp = f"{doc}/copyright"
    if cp in members and members[cp][1] is not None:
        pkg.copyright_member = "/" + cp
        pkg.copyright_licenses = licenses_of(members[cp][1].decode("utf-8", "replace"))


def fetch(args, lock: dict | None) -> list[Package]:
    pkgs = [Package(b, s) for b, s in PACKAGES]
    sources = [p.source for p in pkgs]
    dup = {s for s in sources if sources.count(s) > 1}
    if dup:
        raise SystemExit(f"two binaries of one source in PACKAGES: {sorted(dup)}")
    if not args.skip_apt_update:
        print("apt-get update ...", file=sys.stderr)
        run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
    tmp = Path(args.debs) if args.debs else Path(tempfile.mkdtemp(prefix="changelog-debs-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        pinned = lock and not args.update_lock and not args.allow_newer
        specs = []
        for p in pkgs:
            if pinned:
                entry = lock["packages"].get(p.binary)
                if entry is None:
                    raise SystemExit(
                        f"{p.binary} is in PACKAGES but not in the lock: --update-lock"
                    )
                spec = f"{p.binary}={entry['deb_version']}"
            else:
                spec = p.binary
            have = {
                deb_field(d, "Version")
                for d in tmp.glob(f"{p.binary}_*.deb")
                if deb_field(d, "Package") == p.binary
            }
            if not (have and (not pinned or spec.split("=", 1)[1] in have)):
                specs.append(spec)
        if specs:
            print(f"apt-get download {len(specs)} packages into {tmp} ...", file=sys.stderr)
            apt_download(specs, tmp)
        for p in pkgs:
            versions = {}
            for d in tmp.glob(f"{p.binary}_*.deb"):
                if deb_field(d, "Package") == p.binary:
                    versions[deb_field(d, "Version")] = d
            want = lock["packages"][p.binary]["deb_version"] if pinned else None
            if want and want not in versions:
                raise SystemExit(f"{p.binary}: {want} not among downloaded {sorted(versions)}")
            if not want and len(versions) != 1:
                raise SystemExit(
                    f"{p.binary}: {len(versions)} versions in {tmp}: {sorted(versions)}"
                )
            deb = versions[want] if want else next(iter(versions.values()))
            read_deb(p, deb)
    finally:
        if not args.debs:
            shutil.rmtree(tmp, ignore_errors=True)
    if lock:
        changed = []
        for p in pkgs:
            e = lock["packages"].get(p.binary, {})
            if e.get("changelog_sha256") != p.changelog_sha256:
                changed.append(f"{p.binary} {e.get('deb_version')} -> {p.deb_version}")
        if changed and not (args.allow_newer or args.update_lock):
            raise SystemExit("changelog digests differ from the lock:\n  " + "\n  ".join(changed))
        if changed:
            print("changed since the lock:\n  " + "\n  ".join(changed), file=sys.stderr)
    return pkgs


# --------------------------------------------------------------------------- parse


@dataclass
class Entry:
    source: str
    version: str
    text: str


def parse_entries(pkg: Package, stats: dict) -> list[Entry]:
    """Version entries as they appear: header line through trailer line."""
    lines = pkg.text.split("\n")
    entries: list[Entry] = []
    cur: list[str] | None = None
    version = ""
    skipped = no_trailer = 0
    for line in lines:
        m = HEADER_RE.match(line)
        if m:
            if cur is not None:  # header again before a trailer: drop that entry
                no_trailer += 1
            cur, version = [line], m.group(2)
            continue
        if cur is None:
            if line.strip():
                skipped += 1  # comments, "Local variables:", old-format logs
            continue
        cur.append(line)
        if TRAILER_RE.match(line):
            entries.append(Entry(pkg.source, version, "\n".join(cur)))
            cur = None
    if cur is not None:
        no_trailer += 1
    stats[pkg.source] = {
        "entries_parsed": len(entries),
        "lines_outside_entries": skipped,
        "entries_without_trailer": no_trailer,
    }
    return entries


def cap_entries(entries: list[Entry]) -> list[Entry]:
    kept, total = [], 0
    for e in entries:  # newest first, as in the file
        size = len(e.text.encode())
        if kept and total + size > MAX_BYTES_PER_PACKAGE:
            break
        kept.append(e)
        total += size
    return kept


def items_of(entry: Entry) -> list[str]:
    """Top-level bullets of an entry with their continuation lines, dedented."""
    out: list[str] = []
    cur: list[str] | None = None
    indent = 0
    for line in entry.text.split("\n")[1:]:
        m = BULLET_RE.match(line)
        if m:
            if cur:
                out.append("\n".join(cur))
            indent = len(m.group(1))
            cur = [line[indent:]]
            continue
        if cur is not None:
            lead = len(line) - len(line.lstrip(" "))
            if line.strip() and lead > indent and not TRAILER_RE.match(line):
                cur.append(line[indent:])
                continue
            out.append("\n".join(cur))
            cur = None
    if cur:
        out.append("\n".join(cur))
    return [t.rstrip() for t in out]


def medium_of(entries: list[Entry]) -> list[tuple[str, str]]:
    """(first version, text): consecutive entries joined by a blank line until >= target."""
    chunks: list[list[Entry]] = []
    cur: list[Entry] = []
    size = 0
    for e in entries:
        cur.append(e)
        size += len(e.text.encode()) + 2
        if size >= MEDIUM_TARGET:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        if chunks and size < MEDIUM_TAIL_MERGE:
            chunks[-1].extend(cur)
        else:
            chunks.append(cur)
    return [(c[0].version, "\n\n".join(e.text for e in c)) for c in chunks]


# --------------------------------------------------------------------------- output


def dist(sizes: list[int]) -> dict:
    if not sizes:
        return {"n": 0}
    s = sorted(sizes)

    def q(f: float) -> int:
        return s[min(len(s) - 1, int(f * len(s)))]

    return {
        "n": len(s),
        "bytes": sum(s),
        "min": s[0],
        "p10": q(0.10),
        "p25": q(0.25),
        "median": int(statistics.median(s)),
        "p75": q(0.75),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": s[-1],
        "mean": round(sum(s) / len(s), 1),
    }


def build(pkgs: list[Package], out: Path) -> dict:
    parse_stats: dict = {}
    by_source: dict[str, list[Entry]] = {}
    for p in sorted(pkgs, key=lambda p: p.source):
        full = parse_entries(p, parse_stats)
        kept = cap_entries(full)
        parse_stats[p.source]["entries_kept"] = len(kept)
        parse_stats[p.source]["entry_bytes_kept"] = sum(len(e.text.encode()) for e in kept)
        parse_stats[p.source]["entry_bytes_all"] = sum(len(e.text.encode()) for e in full)
        by_source[p.source] = kept

    raw: dict[str, list[dict]] = {"entries": [], "items": [], "medium": []}
    item_all_sizes: list[int] = []
    for src, entries in by_source.items():
        sp = split_of(src)
        for e in entries:
            raw["entries"].append(
                {"source": src, "split": sp, "version": e.version, "text": e.text}
            )
            for it in items_of(e):
                n = len(it.encode())
                item_all_sizes.append(n)
                if ITEM_MIN <= n <= ITEM_MAX:
                    raw["items"].append(
                        {"source": src, "split": sp, "version": e.version, "text": it}
                    )
        for ver, text in medium_of(entries):
            raw["medium"].append({"source": src, "split": sp, "version": ver, "text": text})

    files = {
        "entries": "changelog-entries.jsonl",
        "items": "changelog-items.jsonl",
        "medium": "changelog-medium.jsonl",
    }
    summary: dict = {"files": {}}
    for kind, recs in raw.items():
        # Dedupe exact texts; train records claim a text first, so a text seen in both
        # splits stays in train only and test holds nothing a train record repeats.
        seen: set[str] = set()
        drop: set[int] = set()
        dupes = {"within_train": 0, "within_test": 0, "test_dup_of_train": 0}
        order = sorted(range(len(recs)), key=lambda i: (recs[i]["split"] != "train", i))
        first_split: dict[str, str] = {}
        for i in order:
            t = recs[i]["text"]
            if t in seen:
                drop.add(i)
                a, b = first_split[t], recs[i]["split"]
                dupes["test_dup_of_train" if a != b else f"within_{b}"] += 1
            else:
                seen.add(t)
                first_split[t] = recs[i]["split"]
        counter: dict[str, int] = {}
        path = out / files[kind]
        per_split: dict[str, list[int]] = {"train": [], "test": []}
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for i, r in enumerate(recs):
                if i in drop:
                    continue
                n = counter.get(r["source"], 0)
                counter[r["source"]] = n + 1
                rec = {
                    "id": f"{r['source']}-{kind[0]}{n:04d}",
                    "source": r["source"],
                    "split": r["split"],
                    "version": r["version"],
                    "text": r["text"],
                }
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                per_split[r["split"]].append(len(r["text"].encode()))
        data = path.read_bytes()
        summary["files"][files[kind]] = {
            "file_bytes": len(data),
            "sha256": sha256(data),
            "records_before_dedupe": len(recs),
            "duplicates_removed": dupes,
            "all": dist(per_split["train"] + per_split["test"]),
            "train": dist(per_split["train"]),
            "test": dist(per_split["test"]),
            "sources_train": sum(1 for s in by_source if split_of(s) == "train"),
            "sources_test": sum(1 for s in by_source if split_of(s) == "test"),
        }
    summary["items_before_size_filter"] = dist(item_all_sizes)
    summary["items_below_min"] = sum(1 for n in item_all_sizes if n < ITEM_MIN)
    summary["items_above_max"] = sum(1 for n in item_all_sizes if n > ITEM_MAX)
    hist_edges = [0, 60, 100, 150, 200, 250, 300, 400, 600, 1000, 10**9]
    summary["items_histogram"] = [
        {"from": lo, "to": hi, "n": sum(1 for n in item_all_sizes if lo <= n < hi)}
        for lo, hi in itertools.pairwise(hist_edges)
    ]
    summary["parse"] = parse_stats
    return summary


def write_lock(pkgs: list[Package], path: Path) -> None:
    lock = {
        "distribution": "Debian 12 bookworm (bookworm, bookworm-updates, bookworm-security)",
        "packages": {
            p.binary: {
                "source": p.source,
                "deb_version": p.deb_version,
                "deb_filename": p.deb_filename,
                "deb_sha256": p.deb_sha256,
                "changelog": p.changelog_member,
                "changelog_sha256": p.changelog_sha256,
                "changelog_gz_sha256": p.changelog_gz_sha256,
                "changelog_bytes": p.changelog_bytes,
                "changelog_top_version": p.changelog_top_version,
                "trimmed_by_debhelper": p.trimmed_by_debhelper,
                "non_utf8_lines": p.non_utf8_lines,
                "copyright": p.copyright_member,
                "copyright_licenses": p.copyright_licenses,
            }
            for p in sorted(pkgs, key=lambda p: p.binary)
        },
    }
    path.write_text(json.dumps(lock, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def fmt(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def write_readme(pkgs: list[Package], summary: dict, out: Path) -> None:
    L: list[str] = []
    a = L.append
    files = summary["files"]
    a("# Debian changelog corpus (many short records of one kind)\n")
    a(
        "Records cut from the Debian changelogs that Debian 12 *bookworm* ships inside its "
        f"binary packages: {len(pkgs)} source packages, one binary package each, pinned in "
        "`packages.lock.json`. Built by `build.py` (stdlib Python 3.11, `apt-get`, "
        "`dpkg-deb`). Used by `bench/streaming.py` (short and medium records through "
        "BatchCompress).\n"
    )
    a(
        'Every line is `{"id", "source", "split", "version", "text"}`, the project\'s '
        "batch-corpus format (`id` and `text` are what `llmc batch` reads; the other keys "
        "are ignored by it). `source` is the Debian source package, `version` the version "
        "of the (first) entry the record comes from.\n"
    )
    a("## Files\n")
    a("| file | what one record is | records | file bytes | text bytes | sha256 |")
    a("|---|---|---|---|---|---|")
    what = {
        "changelog-entries.jsonl": "one whole version entry: header, body, trailer, as in the file",
        "changelog-items.jsonl": (
            "one top-level `* ` bullet + its continuation lines, dedented by the bullet's "
            f"indent; kept if {ITEM_MIN}-{ITEM_MAX} UTF-8 bytes"
        ),
        "changelog-medium.jsonl": (
            "consecutive whole entries of one package joined by a blank line until >= "
            f"{MEDIUM_TARGET} B (a package's last chunk under {MEDIUM_TAIL_MERGE} B joins the "
            "one before)"
        ),
    }
    for name, s in files.items():
        a(
            f"| `{name}` | {what[name]} | {fmt(s['all']['n'])} | {fmt(s['file_bytes'])} | "
            f"{fmt(s['all']['bytes'])} | `{s['sha256'][:16]}…` |"
        )
    a("\nFull digests are in `stats.json`.\n")
    a("## Split (by document)\n")
    a(
        "Each *source package* is wholly `train` or wholly `test`: `train` if sha256(source "
        "package name), read as an integer, is odd "
        "(`int(hashlib.sha256(name.encode()).hexdigest(), 16) % 2 == 1`). "
        "A dictionary trained on `train` has never seen any text of a `test` package. Odd rather "
        "than even was picked once, before any measurement, so that the larger half trains "
        "(with even -> train: 35 packages / 0.89 MB of entries train, 43 / 1.59 MB test).\n"
    )
    a(
        "| file | split | sources | records | text bytes | min | p10 | median | p90 | p99 | max "
        "| mean |"
    )
    a("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in files.items():
        for sp in ("train", "test", "all"):
            d = s[sp]
            srcs = s.get(f"sources_{sp}", s["sources_train"] + s["sources_test"])
            a(
                f"| `{name}` | {sp} | {srcs} | {fmt(d['n'])} | {fmt(d['bytes'])} | {d['min']} | "
                f"{d['p10']} | {d['median']} | {d['p90']} | {d['p99']} | {fmt(d['max'])} | "
                f"{d['mean']} |"
            )
    a("\nSizes are UTF-8 bytes of `text`.\n")
    a("### Items before the size filter\n")
    ib = summary["items_before_size_filter"]
    a(
        f"{fmt(ib['n'])} top-level bullets in the kept entries (median {ib['median']} B, "
        f"p10 {ib['p10']}, p90 {ib['p90']}, max {fmt(ib['max'])}); "
        f"{fmt(summary['items_below_min'])} "
        f"are under {ITEM_MIN} B (mostly one-liners such as `* New upstream release.`) and "
        f"{fmt(summary['items_above_max'])} over {ITEM_MAX} B, and are left out.\n"
    )
    a("| bytes | bullets |")
    a("|---|---|")
    for h in summary["items_histogram"]:
        hi = "∞" if h["to"] >= 10**9 else h["to"]
        a(f"| {h['from']}\u2013{hi} | {fmt(h['n'])} |")
    a("\n## Dedupe\n")
    a(
        "Exact duplicate texts are removed per file. Train records claim a text first, so a "
        "text found in both splits stays in `train` only, and `test` repeats nothing of "
        "`train` verbatim (a conservative choice for dictionary gains).\n"
    )
    a("| file | before | within train | within test | test copies of train |")
    a("|---|---|---|---|---|")
    for name, s in files.items():
        d = s["duplicates_removed"]
        a(
            f"| `{name}` | {fmt(s['records_before_dedupe'])} | {d['within_train']} | "
            f"{d['within_test']} | {d['test_dup_of_train']} |"
        )
    a("\n## How it is cut\n")
    a(
        "* The changelog is `/usr/share/doc/<binary>/changelog.Debian.gz`, or "
        "`/usr/share/doc/<binary>/changelog.gz` for Debian-native packages (adduser, apt, "
        "base-files, ca-certificates, debhelper, devscripts, dpkg, initramfs-tools, lintian), "
        "whose changelog is the Debian one; the choice is checked by the first line parsing as "
        "a Debian changelog header. The binNMU file `changelog.Debian.<arch>.gz` is not used."
    )
    a(
        "* Entries follow deb-changelog(5): a header `package (version) dist; urgency=...` "
        "through the trailer ` -- Name <email>  date`. Lines outside entries (debhelper's "
        "`# Older entries have been removed...` note, Emacs `Local variables:` blocks, the "
        "old free-form logs at the end of some old changelogs) are not used."
    )
    a(
        "* Packages built with debhelper >= 13.10 (bookworm has 13.11.4) ship a trimmed "
        "changelog: `dh_installchangelogs` keeps only entries newer than the release of the "
        "then oldstable, Debian 10 buster (2019-07-06), and ends the file with `# Older "
        "entries have been removed from this changelog.`, unless the package opts out "
        f"(`--no-trim`). {sum(p.trimmed_by_debhelper for p in pkgs)} of {len(pkgs)} changelogs "
        "here are trimmed (`trimmed_by_debhelper` in the lock); the others (e.g. binutils, "
        "dpkg, debianutils) reach back to the 1990s."
    )
    a(
        f"* Per package only the newest entries up to {MAX_BYTES_PER_PACKAGE // 1024} KiB of entry "
        "text are kept, so dpkg (750 KB of changelog) and binutils (240 KB) don't dominate."
    )
    a(
        "* Text is UTF-8; a line of an old changelog that is not valid UTF-8 is read as latin-1 "
        f"({sum(p.non_utf8_lines for p in pkgs)} such lines in all).\n"
    )
    a("## Packages\n")
    a(
        "| source | binary downloaded | version (.deb) | changelog | bytes | trimmed "
        "| entries kept / parsed | changelog sha256 |"
    )
    a("|---|---|---|---|---|---|---|---|")
    for p in sorted(pkgs, key=lambda p: p.source):
        ps = summary["parse"][p.source]
        a(
            f"| {p.source} ({split_of(p.source)}) | {p.binary} | `{p.deb_version}` | "
            f"`{p.changelog_member.rsplit('/', 1)[1]}` | {fmt(p.changelog_bytes)} | "
            f"{'yes' if p.trimmed_by_debhelper else 'no'} | "
            f"{ps['entries_kept']} / {ps['entries_parsed']} | "
            f"`{p.changelog_sha256}` |"
        )
    a("\n## Provenance and licence\n")
    a(
        "All texts come from packages of Debian 12 (bookworm) main, as downloaded from Debian's "
        "archive (suites bookworm, bookworm-updates, bookworm-security) with `apt-get download`; "
        "the exact .deb versions and digests are in `packages.lock.json`. Debian changelogs "
        "carry no licence of their own: they are part of each package's Debian packaging "
        "(`debian/changelog`), distributed in the binary package under that package's copyright "
        "terms, which every package states in `/usr/share/doc/<binary>/copyright` "
        f"(present in all {sum(bool(p.copyright_member) for p in pkgs)} of {len(pkgs)} .debs "
        "used; the licence names found there are listed per package in the lock, "
        "`copyright_licenses`). All are in Debian main, so they meet the Debian Free Software "
        "Guidelines and may be redistributed; the packaging (`debian/*`) is usually under the "
        "package's own or a GPL/BSD-style licence. Keep this README with the files. The "
        "records carry maintainers' names and e-mail addresses exactly as published.\n"
    )
    a("## Rebuild\n")
    a(
        "```sh\n"
        "# as root on Debian 12 (apt-get update is run by the script unless --skip-apt-update)\n"
        "cd corpus/debian-changelogs   # outputs go beside the script unless --out\n"
        "python3 build.py                 # the pinned versions; fails if any changed\n"
        "python3 build.py --allow-newer   # current bookworm versions, lock untouched\n"
        "python3 build.py --update-lock   # re-pin to current versions\n"
        "python3 build.py --debs DIR      # keep/reuse the .debs in DIR\n```\n"
    )
    a(
        "Debian's mirrors keep only the current version of each bookworm package, so after a "
        "point release or security update some pins can no longer be downloaded; the lock's "
        "changelog digests then tell exactly which inputs changed. Outputs are byte-for-byte "
        "the same for the same inputs (no timestamps).\n"
    )
    (out / "README.md").write_text("\n".join(L), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE), help="output folder (default: the script's)")
    ap.add_argument("--lock", default=None, help="lock file (default OUT/packages.lock.json)")
    ap.add_argument(
        "--update-lock", action="store_true", help="download current versions, rewrite the lock"
    )
    ap.add_argument(
        "--allow-newer", action="store_true", help="download current versions, keep the lock"
    )
    ap.add_argument(
        "--debs",
        default=None,
        help="folder to keep/reuse downloaded .debs (start it empty for "
        "--update-lock/--allow-newer: a cached older .deb is reused as is)",
    )
    ap.add_argument("--skip-apt-update", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock_path = Path(args.lock) if args.lock else out / "packages.lock.json"
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else None
    pkgs = fetch(args, lock)
    if lock is None or args.update_lock:
        write_lock(pkgs, lock_path)
    summary = build(pkgs, out)
    (out / "stats.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_readme(pkgs, summary, out)
    for name, s in summary["files"].items():
        print(
            f"{name}: {s['all']['n']} records ({s['train']['n']} train / {s['test']['n']} test), "
            f"{s['all']['bytes']:,} text bytes, median {s['all']['median']} B"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
