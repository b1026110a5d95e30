"""The corpus builder's distributor: reader → worker → writer with the shard as the unit of work.

``build_corpus(config)`` runs, in order:

1. **lock and config**: one build per output folder; ``config.json`` is saved on the first run and a rerun
   with different content settings is refused (resuming would mix two corpora).
2. **scan** (reader): every source is probed and decoded once for its real frame count and scene cuts, in
   tasks of ``SCAN_BATCH`` sources; each batch is saved under ``scan/`` so an interrupted scan resumes.
3. **plan**: clips are cut inside shots and grouped into shards; the plan is saved as ``plan.parquet`` on
   the first run and reused by every rerun, so shard contents never move (even if the input folder
   gained files since).
4. **shards** (worker): one task per unfinished shard, on Ray or in a plain loop; a shard is finished
   when its ``shard-NNNNNN.json`` exists, and finished shards are skipped. Failed tasks are retried.
5. **manifest and stats** (writer): ``manifest.parquet`` from every shard's stats file plus the source
   failures, then ``stats.json`` last.

What is per shard and what is global: scans and shards are independent tasks that only read sources and
write their own files, so they spread over any number of Ray nodes sharing ``--out``; the plan, the
manifest and the stats are small global steps on the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascadevsr.datasets.config import CorpusConfig, content_differences
from cascadevsr.datasets.shard import (
    ShardResult,
    ShardSpec,
    process_shard,
    shard_done,
    shard_name,
    shard_paths,
    write_json_atomic,
)
from cascadevsr.datasets.sources import (
    MUSIQ_FILE,
    ClipSpec,
    SourceScan,
    expand_inputs,
    find_musiq_weights,
    scan_batch,
)
from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

SCAN_BATCH = 8
MANIFEST_COLUMNS = ("key", "status", "shard", "source", "start", "end", "preset", "seed", "reason",
                    "hr_size", "lr_size", "brightness", "laplacian_var", "musiq", "ops", "params",
                    "hr_bytes", "lr_bytes")


@dataclass
class BuildReport:
    """What a build did: the final ``stats.json`` content and where things are."""

    out: Path
    stats: dict[str, Any]
    failed_shards: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every planned shard is finished."""
        return not self.failed_shards


# ------------------------------------------------------------------------------------------------ runners


class LocalRunner:
    """Runs tasks one after another in this process (``--workers 0``, tests, the benchmark baseline)."""

    parallelism = 1

    def map(self, fn: Callable[..., Any], items: list[Any], on_result: Callable[[Any, Any], None],
            report: Callable[[str, str], None] | None = None) -> None:
        """Call ``fn(item[, report])`` for each item; ``on_result(item, result)`` after each."""
        for item in items:
            on_result(item, fn(item, report) if report else fn(item))

    def close(self) -> None:
        """Nothing to release."""


class RayRunner:
    """Runs tasks as Ray tasks (one CPU each) on a local instance or an existing cluster."""

    def __init__(self, cfg: CorpusConfig) -> None:
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if cfg.address:
                try:
                    ray.init(address=cfg.address, log_to_driver=False)
                except (ConnectionError, ValueError, RuntimeError) as err:
                    raise UserError(f"cannot join the Ray cluster at --address {cfg.address} "
                                    f"({' '.join(str(err).split())[:200]}).") from None
            else:
                ray.init(num_cpus=cfg.workers or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False)
            self.started = True
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Tasks in flight at once: one per CPU (or --workers, if fewer), so that --workers caps the load on
        # a shared cluster and a million-shard plan does not sit in Ray's queue.
        self.parallelism = min(cfg.workers, cpus) if cfg.workers else cpus
        self.counter = _progress_actor(ray).remote()

    def map(self, fn: Callable[..., Any], items: list[Any], on_result: Callable[[Any, Any], None],
            report: Callable[[str, str], None] | None = None) -> None:
        """Run ``fn`` over ``items`` with at most ``parallelism`` tasks in flight; progress reported through
        a counter actor that ``report`` is fed from."""
        ray = self.ray
        remote = ray.remote(fn).options(num_cpus=1, max_retries=2)
        pending: dict[Any, Any] = {}
        queue = list(items)
        seen: Counter[str] = Counter()
        while queue or pending:
            while queue and len(pending) < self.parallelism:
                item = queue.pop(0)
                ref = remote.remote(item, _ActorReport(self.counter)) if report else remote.remote(item)
                pending[ref] = item
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if report:
                snapshot = ray.get(self.counter.snapshot.remote())
                for key, total in snapshot.items():
                    shard, status = key.split("/")
                    for _ in range(total - seen[key]):
                        report(shard, status)
                    seen[key] = total
            for ref in done:
                on_result(pending.pop(ref), ray.get(ref))

    def close(self) -> None:
        """Shut down the Ray instance this runner started (or only disconnect from a cluster)."""
        if self.started:
            self.ray.shutdown()


def check_reachable(address: str, wait: float = 15.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (Ray itself retries for minutes).

    Waits up to ``wait`` seconds for the port to open: a head node started a moment ago (``ray start
    --head`` in a script, just before the build) takes a few seconds to listen.
    """
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5.0).close()
            return
        except ValueError:
            break
        except OSError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    raise UserError(f"nothing answers at --address {address}; start the head node with "
                    f"`ray start --head --port=PORT` and pass HOST:PORT.")


def _progress_actor(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class ProgressCounter:
        """Counts clips per (shard, status) across every worker, for the driver's progress bar."""

        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def add(self, shard: str, status: str) -> None:
            key = f"{shard}/{status}"
            self.counts[key] = self.counts.get(key, 0) + 1

        def snapshot(self) -> dict[str, int]:
            return dict(self.counts)

    return ProgressCounter


class _ActorReport:
    """A picklable ``report`` that forwards to the progress actor without waiting for it."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def __call__(self, shard: str, status: str) -> None:
        self.counter.add.remote(shard, status)


def make_runner(cfg: CorpusConfig) -> LocalRunner | RayRunner:
    """A plain loop for ``workers == 0``, Ray otherwise."""
    return LocalRunner() if cfg.workers == 0 else RayRunner(cfg)


# ------------------------------------------------------------------------------------------- lock, config


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Refuse a second concurrent build into ``out`` (a lock left by a killed build is taken over)."""
    lock = out / ".build.lock"
    host = socket.gethostname()
    if lock.exists():
        try:
            other_host, pid = lock.read_text().split()
            alive = other_host == host and int(pid) != os.getpid() and _pid_alive(int(pid))
        except ValueError:
            alive = False
        if alive:
            raise UserError(f"another build (pid {pid}) is writing {out}; wait for it or use another --out.")
    lock.write_text(f"{host} {os.getpid()}\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_config(cfg: CorpusConfig) -> bool:
    """Save ``config.json`` on a first run; on a rerun refuse changed content settings. True when resuming."""
    import json

    path = cfg.out_dir / "config.json"
    resuming = path.exists()
    if resuming:
        saved = json.loads(path.read_text())
        diff = content_differences(saved, cfg)
        if diff:
            raise UserError(f"{cfg.out} holds a corpus built with other settings ({', '.join(diff)} differ); "
                            f"rerun with the same settings to resume it, or choose another --out.")
    write_json_atomic(path, cfg.to_dict())
    return resuming


# ------------------------------------------------------------------------------------------------ scan


def scan_sources(sources: list[str], cfg: CorpusConfig, runner: LocalRunner | RayRunner,
                 show_progress: bool) -> list[SourceScan]:
    """Scan every source in batches; finished batches (``scan/scan-NNNNNN.json``) are reused."""
    import json

    from tqdm import tqdm

    folder = cfg.out_dir / "scan"
    folder.mkdir(exist_ok=True)
    batches = [sources[i : i + SCAN_BATCH] for i in range(0, len(sources), SCAN_BATCH)]
    found: dict[int, list[dict[str, Any]]] = {}
    todo: list[_ScanTask] = []
    for i, paths in enumerate(batches):
        path = folder / f"scan-{i:06d}.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data["paths"] == paths:
                found[i] = data["scans"]
                continue
        todo.append(_ScanTask(i, tuple(paths), cfg.scene_cut_threshold))
    bar = tqdm(total=len(sources), initial=len(sources) - sum(len(t.paths) for t in todo), unit="video",
               desc="scanning", disable=not show_progress, leave=False)

    def on_result(task: _ScanTask, scans: list[dict[str, Any]]) -> None:
        write_json_atomic(folder / f"scan-{task.index:06d}.json", {"paths": list(task.paths), "scans": scans})
        found[task.index] = scans
        bar.update(len(task.paths))

    runner.map(run_scan_task, todo, on_result)
    bar.close()
    return [SourceScan.from_dict(d) for i in range(len(batches)) for d in found[i]]


@dataclass(frozen=True)
class _ScanTask:
    index: int
    paths: tuple[str, ...]
    threshold: float


def run_scan_task(task: _ScanTask) -> list[dict[str, Any]]:
    """One scan task (picklable entry point for Ray)."""
    return scan_batch(list(task.paths), task.threshold)


# ------------------------------------------------------------------------------------------------ plan


def plan_shards(clips: list[ClipSpec], cfg: CorpusConfig, musiq: str | None) -> list[ShardSpec]:
    """Consecutive groups of ``samples_per_shard`` clips (source then time order)."""
    n = cfg.samples_per_shard
    return [ShardSpec(i // n, tuple(clips[i : i + n]), cfg, musiq) for i in range(0, len(clips), n)]


def save_plan(out: Path, clips: list[ClipSpec], cfg: CorpusConfig, scans: list[SourceScan]) -> None:
    """``plan.parquet`` (one row per clip with its shard) and ``sources.parquet`` (one row per source)."""
    import pandas as pd

    n = cfg.samples_per_shard
    plan = pd.DataFrame({
        "shard": [shard_name(i // n) for i in range(len(clips))], "key": [c.key for c in clips],
        "source": [c.source for c in clips], "start": [c.start for c in clips], "end": [c.end for c in clips],
        "seed": [str(c.seed) for c in clips], "fps": [c.fps for c in clips],
        "source_h": [c.source_size[0] for c in clips], "source_w": [c.source_size[1] for c in clips],
    })
    sources = pd.DataFrame([{**s.to_dict(), "cuts": ",".join(map(str, s.cuts))} for s in scans],
                           columns=[*SourceScan.__dataclass_fields__])
    _write_parquet(sources, out / "sources.parquet")
    _write_parquet(plan, out / "plan.parquet")  # written last: its presence means the plan is final


def load_plan(out: Path) -> tuple[list[ClipSpec], list[SourceScan]]:
    """Inverse of ``save_plan``."""
    import pandas as pd

    plan = pd.read_parquet(out / "plan.parquet")
    clips = [ClipSpec(key=r.key, source=r.source, start=int(r.start), end=int(r.end), seed=int(r.seed),
                      fps=float(r.fps), source_size=(int(r.source_h), int(r.source_w)))
             for r in plan.itertuples(index=False)]
    scans = []
    for r in pd.read_parquet(out / "sources.parquet").to_dict("records"):
        cuts = tuple(int(c) for c in r.pop("cuts").split(",") if c)
        scans.append(SourceScan(**{**r, "cuts": cuts}))
    return clips, scans


def _write_parquet(df: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ build


def build_corpus(cfg: CorpusConfig, *, show_progress: bool = True,
                 announce: Callable[[str], None] | None = print,
                 runner_factory: Callable[[CorpusConfig], Any] | None = None) -> BuildReport:
    """Build (or resume) the corpus described by ``cfg``; returns the final stats.

    Bad inputs never stop the build: they end up in the manifest's failures. Shards whose task fails
    even after ``shard_retries`` are listed in ``BuildReport.failed_shards``; rerunning finishes them.
    ``runner_factory`` swaps the task runner (anything with ``map``/``close`` like :class:`LocalRunner`);
    by default a plain loop for ``workers == 0`` and Ray otherwise.
    """
    from cascadevsr.datasets.sources import plan_clips
    from cascadevsr.degrade.pipeline import load_preset, lr_size_for

    say = announce or (lambda _msg: None)
    out = cfg.out_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder.")
    # The user's mistakes (bad preset, inputs, weights path) are refused before anything is written.
    pipeline = load_preset(cfg.preset)
    lr_size = lr_size_for(cfg.hr_size, cfg.scale, cfg.lr_size)  # an LR size too small for every clip
    if cfg.latent_codec:
        check_latent_codec(cfg, lr_size)
    check_base_model_setting(cfg, pipeline)
    if note := model_guided_latent_note(cfg, pipeline):
        say(note)
    musiq = find_musiq_weights(cfg.musiq_weights)
    planned = (out / "plan.parquet").exists()
    sources = [] if planned else expand_inputs(cfg.inputs)
    if not planned and not sources:
        raise UserError(f"no video files found in --input {' '.join(cfg.inputs)}.")
    if cfg.address:
        check_reachable(cfg.address)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with build_lock(out):
        resuming = check_config(cfg)
        for stale in [*out.glob("*.tmp"), *out.glob("scan/*.tmp")]:
            stale.unlink()  # left by a killed run; the lock says no other build is writing here
        if musiq is None:
            log.warning("MUSIQ filter skipped: no %s in the weights cache; pass --musiq-weights PATH to "
                        "enable it", MUSIQ_FILE)
        runner = None
        try:
            if planned:
                clips, scans = load_plan(out)
                say(f"resuming {out}: plan of {len(clips)} clips from {len(scans)} sources")
                scan_seconds = 0.0
            else:
                say(f"scanning {len(sources)} video(s) for frame counts and scene cuts")
                runner = (runner_factory or make_runner)(cfg)
                ts = time.perf_counter()
                scans = scan_sources(sources, cfg, runner, show_progress)
                scan_seconds = time.perf_counter() - ts
                clips, _ = plan_clips(scans, cfg)
                save_plan(out, clips, cfg, scans)
            _, source_failures = plan_clips(scans, cfg)
            shards = plan_shards(clips, cfg, str(musiq) if musiq else None)
            todo = [s for s in shards if not shard_done(out, s.name)]
            say(f"{len(clips)} clips in {len(shards)} shards ({len(shards) - len(todo)} already done); "
                f"{len(source_failures)} source(s) unusable")
            ts = time.perf_counter()
            failed: list[str] = []
            if todo:
                runner = runner or (runner_factory or make_runner)(cfg)
                failed = _run_shards(todo, cfg, runner, show_progress)
            shard_seconds = time.perf_counter() - ts
        finally:
            if runner is not None:
                runner.close()
        done_now = sum(len(s.clips) for s in todo if s.name not in failed)
        stats = write_outputs(out, cfg, pipeline.name, shards, source_failures, failed, musiq, {
            "seconds": round(time.perf_counter() - t0, 3), "scan_seconds": round(scan_seconds, 3),
            "shard_seconds": round(shard_seconds, 3), "clips_this_run": done_now,
            "clips_per_s": round(done_now / shard_seconds, 4) if shard_seconds > 0 and done_now else 0.0,
            "workers": cfg.workers, "resumed": resuming,
        })
    return BuildReport(out, stats, failed)


def check_base_model_setting(cfg: CorpusConfig, pipeline: Any) -> None:
    """Refuse before any work a preset with a model-guided step but no ``--base-model``, or a base model folder
    without its parts (the model itself is loaded by each worker)."""
    from cascadevsr.base_model import check_base_model_folder, check_clip_frames
    from cascadevsr.degrade.model_guided import check_base_model, uses_model_guided

    check_base_model(pipeline, cfg.base_model)
    if cfg.base_model and uses_model_guided(pipeline):
        check_clip_frames(cfg.base_model, cfg.clip_frames)  # checks the folder's layout first
    elif cfg.base_model:
        check_base_model_folder(cfg.base_model)


def model_guided_latent_note(cfg: CorpusConfig, pipeline: Any) -> str:
    """A line for the user when a model-guided corpus stores latents with another codec than the base model's
    VAE (the LR latents are then encodings of the LR frames, not the denoised latents); empty otherwise."""
    from cascadevsr.degrade.model_guided import uses_model_guided

    if not (cfg.latent_codec and cfg.base_model and uses_model_guided(pipeline)):
        return ""
    from cascadevsr.base_model import base_vae_spec
    from cascadevsr.datasets.config import codec_spec
    from cascadevsr.latent import same_codec

    vae = base_vae_spec(cfg.base_model)
    if same_codec(codec_spec(cfg.latent_codec), vae):
        return ""
    return (f"note: --latent-codec {cfg.latent_codec} is not the base model's VAE ({vae['path']}), so the LR "
            "latents of model-guided samples are encodings of their LR frames, not the base model's denoised "
            f"latents; pass --latent-codec {vae['name']}:{vae['path']} to store those.")


def check_latent_codec(cfg: CorpusConfig, lr_size: tuple[int, int]) -> None:
    """Refuse a latent codec whose time/space factors do not fit the clip length and frame sizes."""
    from cascadevsr.datasets.shard import latent_codec
    from cascadevsr.latent import latent_frames

    codec = latent_codec(cfg.latent_codec)
    try:
        latent_frames(cfg.clip_frames, codec.time_factor)
    except ValueError as err:
        raise UserError(f"--clip-frames {cfg.clip_frames} does not fit --latent-codec: {err}.") from None
    s = codec.space_factor
    for what, (h, w) in (("HR", cfg.hr_size), ("LR", lr_size)):
        if h % s or w % s:
            raise UserError(f"the {what} size {w}x{h} is not a multiple of the latent codec's space "
                            f"factor {s}.")


def _run_shards(todo: list[ShardSpec], cfg: CorpusConfig, runner: LocalRunner | RayRunner,
                show_progress: bool) -> list[str]:
    """Run shard tasks with retries and a progress bar; returns the names of shards that still failed."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(s.clips) for s in todo), unit="clip", desc="clips", disable=not show_progress,
               dynamic_ncols=True)
    tally: Counter[str] = Counter()
    per_shard: Counter[str] = Counter()

    def report(shard: str, status: str) -> None:
        per_shard[shard] += 1
        tally[status] += 1
        bar.update(1)
        bar.set_postfix(rejected=tally["rejected"], failed=tally["failed"], refresh=False)

    attempts: Counter[str] = Counter()
    failed: dict[str, ShardResult] = {}

    def on_result(spec: ShardSpec, result: ShardResult) -> None:
        attempts[spec.name] += 1
        if result.ok:
            failed.pop(spec.name, None)
            for row in result.rows:
                if row["status"] == "failed":
                    log.info("shard %s clip %s failed: %s", spec.name, row["key"], row["reason"])
            return
        log.error("shard %s failed (attempt %d): %s", spec.name, attempts[spec.name], result.error)
        failed[spec.name] = result
        # Undo this attempt's progress so a retry does not count its clips twice.
        bar.update(-per_shard.pop(spec.name, 0))

    remaining = todo
    for _ in range(cfg.shard_retries + 1):
        runner.map(process_shard, remaining, on_result, report)
        remaining = [s for s in remaining if s.name in failed]
        if not remaining:
            break
    bar.close()
    return sorted(failed)


# ------------------------------------------------------------------------------------------------ outputs


def read_shard_rows(out: Path, names: list[str]) -> list[dict[str, Any]]:
    """Manifest rows of the finished shards among ``names``."""
    import json

    rows: list[dict[str, Any]] = []
    for name in names:
        _, _, stats = shard_paths(out, name)
        if stats.exists():
            rows += json.loads(stats.read_text())["rows"]
    return rows


def write_outputs(out: Path, cfg: CorpusConfig, preset: str, shards: list[ShardSpec],
                  source_failures: list[dict[str, Any]], failed_shards: list[str], musiq: Path | None,
                  throughput: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.parquet`` then ``stats.json`` (last: a complete corpus has both)."""
    import pandas as pd

    rows = read_shard_rows(out, [s.name for s in shards])
    for f in source_failures:
        rows.append({**{c: None for c in MANIFEST_COLUMNS}, "status": "failed", "source": f["source"],
                     "reason": f["reason"], "preset": preset, "key": "", "shard": ""})
    for row in rows:
        # 63-bit seeds as text: a column mixing ints and nulls would become float64 and round them.
        row["seed"] = None if row.get("seed") is None else str(row["seed"])
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    for col in ("start", "end", "hr_bytes", "lr_bytes"):
        manifest[col] = manifest[col].astype("Int64")
    _write_parquet(manifest, out / "manifest.parquet")

    status = Counter(manifest["status"])
    rejected = manifest.loc[manifest["status"] == "rejected", "reason"].map(lambda r: r.split(":")[0])
    failures = manifest.loc[manifest["status"] == "failed", "reason"].map(lambda r: r.split(":")[0])
    sizes = manifest.loc[manifest["status"] == "ok", ["hr_bytes", "lr_bytes"]].sum()
    stats = {
        "complete": not failed_shards,
        "preset": preset,
        "sources": {"total": len({*manifest["source"]}), "unusable": len(source_failures)},
        "clips": {"planned": sum(len(s.clips) for s in shards), "samples": status["ok"],
                  "rejected": status["rejected"], "failed": status["failed"] - len(source_failures)},
        "rejections": dict(Counter(rejected)),
        "failures": dict(Counter(failures)),
        "shards": {"total": len(shards), "finished": sum(shard_done(out, s.name) for s in shards),
                   "failed": failed_shards},
        "bytes": {"hr": int(sizes.get("hr_bytes", 0)), "lr": int(sizes.get("lr_bytes", 0))},
        "filters": {"brightness": [cfg.min_brightness, cfg.max_brightness],
                    "laplacian_var": cfg.min_laplacian_var,
                    "musiq": {"min": cfg.min_musiq, "weights": str(musiq)} if musiq
                    else "skipped: MUSIQ weights not found locally"},
        "throughput": throughput,
    }
    write_json_atomic(out / "stats.json", stats)
    return stats


def corpus_shards(path: str | Path) -> list[str]:
    """Tar paths of the finished, non-empty shards of a corpus folder, in order."""
    import json

    out = Path(path)
    names = sorted(p.stem for p in out.glob("shard-*.json"))
    return [str(shard_paths(out, n)[0]) for n in names
            if shard_done(out, n) and json.loads(shard_paths(out, n)[2].read_text())["counts"]["ok"] > 0]
