"""``pacsguard process --route NAME IN... -o OUT``: a configured route's pipeline on files
and folders, without the service (a research team de-identifying a study on a laptop).

Every input goes through exactly what the service would do with it: the same parsing and
checks, the route's stages in order with the same per-object fault handling (run by the
service's own :class:`~pacsguard.daemon.pipeline.Processor` code), the same writing. The
route's ``match:`` is not applied (``--match`` applies it: inputs it does not match are
skipped and counted). What fails is reported with its reason and not written; the exit
code is 1 when anything failed, so a script notices.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def add_command(sub, with_config) -> None:
    s = with_config(sub.add_parser("process", help="run a configured route's pipeline on files and folders"))
    s.add_argument("paths", nargs="+", metavar="IN", help="files or folders (recursively)")
    s.add_argument("--route", required=True, metavar="NAME", help="the route whose pipeline to run")
    s.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder: each input's path below its folder is kept")
    s.add_argument("--match", action="store_true", help="only inputs the route's match: conditions select")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_process)


class _Progress:
    """One line on a terminal, rewritten in place; nothing when stderr is not a TTY."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last = total, enabled and sys.stderr.isatty(), 0.0

    def update(self, done: int, failed: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 30
        filled = width * done // max(self.total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
                         f"  {failed} failed ")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_process(args) -> int:
    from .cli import _inputs, _load, _print_config_error, _registry
    from .errors import ConfigError, QuarantineError
    from .item import TransportFacts
    from .memory import tune_allocator
    from .parsing import check_integrity, complete_file_meta, object_fault, read_header
    from .pipeline import Processor, _Work
    from .router import select_routes
    from .runtime import build_runtime

    tune_allocator()
    from .spool import Job

    try:
        loaded = _load(args)
        runtime = build_runtime(loaded, _registry()[1])
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_INVALID
    route = next((r for r in runtime.routes if r.name == args.route), None)
    if route is None:
        known = ", ".join(r.name for r in runtime.routes) or "none"
        print(f"pacsguard process: no route {args.route!r} in the config (routes: {known})", file=sys.stderr)
        return EXIT_USAGE
    jobs, missing = _inputs(args.paths)
    for raw in missing:
        print(f"FAILED {raw}: no such file or folder", file=sys.stderr)
    out_root = Path(args.output)
    pm, _ = _registry()
    processor = Processor(None, pm.hook, lambda: runtime, workers=0)
    facts = TransportFacts(source="offline", source_type="file")
    progress = _Progress(len(jobs), not args.quiet)
    written, skipped, failures = 0, 0, []
    for n, (path, root) in enumerate(jobs, start=1):
        job = Job(n, path, path.stat().st_size, facts, "received")
        try:
            header = read_header(path)
            check_integrity(path, header)
            complete_meta = complete_file_meta(header)
            if args.match and route not in select_routes([route], header, facts):
                skipped += 1
                progress.update(n, len(failures))
                continue
            w = _Work(job, route, runtime.keys, complete_meta, runtime.pixels)
            w.item = processor._new_item(w)
            if not complete_meta:
                w.item._header = header  # parsed once
            processor._run_stages([w])
            if w.failed is not None:
                raise QuarantineError(w.failed[0])
            target = _target(path, root, out_root, w.item.output_suffix if w.item.sealed else "")
            target.parent.mkdir(parents=True, exist_ok=True)
            if w.item.modified:
                w.item.write(target)
            else:
                shutil.copyfile(path, target)
            written += 1
        except QuarantineError as exc:
            failures.append((path, exc.reason))
        except Exception as exc:  # one input's fault, never the run's
            failures.append((path, object_fault(None, exc, "cannot process the object")))
        progress.update(n, len(failures))
    for path, reason in failures:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    extra = f", {skipped} not matched by the route" if skipped else ""
    print(f"{len(jobs)} input(s): {written} processed into {out_root}, {len(failures) + len(missing)} failed{extra}")
    return EXIT_INVALID if failures or missing else EXIT_OK


def _target(path: Path, root: Path | None, out_root: Path, suffix: str) -> Path:
    """``OUT/<path below the folder it was found in>`` (a file named itself: ``OUT/<name>``),
    with the output's suffix (``.pgenc`` for a sealed object)."""
    target = out_root / (path.relative_to(root) if root is not None else Path(path.name))
    if suffix and not target.name.endswith(suffix):
        target = target.with_name(target.name + suffix)
    return target
