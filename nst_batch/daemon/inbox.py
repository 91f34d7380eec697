"""What the files in the inbox mean: pure rules from names to submissions.

No file system and no clock here: the caller lists the inbox (which files are complete, how
long each has waited), reads the sidecars, and gets back the submissions that are ready to be
claimed. Everything in the inbox ends as a submission, ready or refused with a reason: a file
either works or is reported, never silently left behind.

The rules (README, "What the inbox understands"):
- a pair ``NAME.content.EXT`` + ``NAME.style.EXT``, with an optional ``NAME.yaml`` sidecar;
- a folder ``NAME/`` with ``style*.EXT`` (several are blended) and one or more content images,
  and an optional ``job.yaml``;
- a sidecar alone, ``NAME.yaml``, whose ``content:`` and ``style:`` name files in the inbox or
  in the style library.

What is refused, and when (nothing is claimed, refused or not, before its files are complete):
- a half pair, a folder without a style or content image, an empty folder, or an image or sidecar
  that belongs to no job: after ``pair_timeout``, since what is missing may still arrive;
- a file that is neither an image nor a sidecar: as soon as it is complete;
- a name with a control character, a line break or bytes that are not UTF-8 (a file, or a folder
  with such a name or such a file in it): as soon as it is complete. It would break or forge the
  lines of logs and error reports, and no one means it;
- a file still open for writing that has been unchanged for ``pair_timeout`` (a copy that stopped
  half way): with its whole job, which never starts;
- a folder with a subfolder (``trip/raw/``): the whole folder, once complete. A job folder holds
  its images one level deep; running the rest without the subfolder would be a surprise;
- a file belongs to one job. A file named by a standalone sidecar is that sidecar's (the first by
  name, if several name it): a later sidecar that names it is refused at once, and so is the other
  half of a pair whose file it took; waiting would not help, and once the file is claimed nothing
  would tell why it never arrived.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from ..util.names import safe_name, unsafe_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SIDECAR_SUFFIXES = (".yaml", ".yml")
FOLDER_SIDECAR = "job.yaml"
LIBRARY_PREFIX = "styles/"  # how a submission refers to the style library
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".swp")  # something may still be writing these


def is_ignored(name: str) -> bool:
    """Files that are never ours: hidden, partial downloads, editor backups, temporaries."""
    return name.startswith(".") or name.endswith((*PARTIAL_SUFFIXES, "~"))


def is_litter(name: str) -> bool:
    """Ignored files nobody is still writing (``.DS_Store``, ``x.jpg~``): they may go with an
    emptied job folder."""
    return is_ignored(name) and not name.endswith(PARTIAL_SUFFIXES)


@dataclass(frozen=True)
class Entry:
    """One file in the inbox, as the watcher sees it. ``path`` is relative, with ``/``; a folder
    the watcher does not look into (an empty one, or one inside a job folder) ends with ``/``."""

    path: str
    complete: bool
    waited: float  # seconds since the file was first seen
    unchanged: float = 0.0  # seconds since its size or mtime last changed
    writing: bool = False  # still open for writing (written to, never closed): never complete by settling


@dataclass(frozen=True)
class SidecarRefs:
    """What a sidecar names, as read by the caller: ``None`` lists mean the key is absent;
    ``problem`` is set when the file could not be read at all."""

    content: tuple[str, ...] | None = None
    style: tuple[str, ...] | None = None
    problem: str | None = None

    @property
    def standalone(self) -> bool:
        return self.content is not None or self.style is not None


@dataclass(frozen=True)
class Submission:
    """A job as the inbox defines it. ``files`` are the inbox files it owns (claimed together);
    ``contents``/``styles`` are inbox paths or ``styles/NAME`` library references."""

    name: str
    kind: str  # pair | folder | sidecar | refused
    files: tuple[str, ...]
    contents: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    sidecar: str | None = None
    problem: str | None = None  # set: claim it and fail it at once with this reason


@dataclass
class _Plan:
    ready: list[Submission] = field(default_factory=list)
    owned: set[str] = field(default_factory=set)  # files of the ready submissions
    waiting: set[str] = field(default_factory=set)  # files of submissions that wait: not leftovers
    named: dict[str, str] = field(default_factory=dict)  # inbox file -> the standalone sidecar it belongs to
    stalled: dict[str, str] = field(default_factory=dict)  # file whose copy stopped half way -> why

    def add(self, submission: Submission) -> None:
        # A stalled copy is the reason its job cannot run, whatever else may be missing.
        stalled = [self.stalled[f] for f in submission.files if f in self.stalled]
        if stalled:
            submission = replace(submission, problem="; ".join(stalled))
        self.ready.append(submission)
        self.owned.update(submission.files)

    def wait(self, files: Iterable[str]) -> None:
        self.waiting.update(files)


def plan(
    entries: Iterable[Entry],
    sidecars: Mapping[str, SidecarRefs],
    library: Iterable[str],
    pair_timeout: float,
) -> list[Submission]:
    """The submissions that can be claimed now, given the inbox's files.

    ``sidecars`` holds what each complete sidecar names; ``library`` the style library's file names.
    No two submissions of one plan share a file.
    """
    entries = {e.path: e for e in entries if not any(is_ignored(part) for part in e.path.split("/"))}
    library = set(library)
    result = _Plan(stalled={p: _stall_reason(e, pair_timeout) for p, e in entries.items() if _stalled(e, pair_timeout)})
    # A stalled file counts as complete only so that its job can be refused whole.
    entries = {p: replace(e, complete=True) if p in result.stalled else e for p, e in entries.items()}
    top = {p: e for p, e in entries.items() if "/" not in p}
    folders: dict[str, dict[str, Entry]] = defaultdict(dict)
    for path, entry in entries.items():
        folder, slash, rest = path.partition("/")
        if slash:
            folders[folder][rest] = entry  # rest "" is the folder itself, reported while it is empty

    for path in sorted(top):
        refs = sidecars.get(path)
        if refs is not None and refs.standalone and top[path].complete and path not in result.named:
            if not unsafe_name(path):
                _standalone(path, refs, top, library, pair_timeout, result)
    pairable = {p: e for p, e in top.items() if p not in result.named and not unsafe_name(p)}
    _pairs(pairable, sidecars, pair_timeout, result)
    for name in sorted(folders):
        _folder(name, folders[name], pair_timeout, result)
    for path in sorted(set(top) - result.owned - result.waiting - set(result.named)):
        _leftover(top[path], (sidecars.get(path) or SidecarRefs()).problem, pair_timeout, result)
    return result.ready


def _stalled(entry: Entry, pair_timeout: float) -> bool:
    return entry.writing and not entry.complete and entry.unchanged >= pair_timeout


def _stall_reason(entry: Entry, pair_timeout: float) -> str:
    return (
        f"{_shown(entry.path)} has been open for writing and unchanged for {entry.unchanged:.0f} s "
        f"(pair_timeout {pair_timeout:g} s): its copy stopped half way; copy it again"
    )


def _shown(path: str) -> str:
    """A path for a message: quoted with escapes when its name has characters a line cannot show."""
    return repr(path) if unsafe_name(path) else path


def _stem_and_role(path: str) -> tuple[str, str | None, str]:
    """'cat.content.jpg' -> ('cat', 'content', '.jpg'); 'cat.yaml' -> ('cat', None, '.yaml')."""
    pure = PurePosixPath(path)
    suffix = pure.suffix.lower()
    stem, _, role = pure.stem.rpartition(".")
    if stem and role in ("content", "style"):
        return stem, role, suffix
    return pure.stem, None, suffix


def _waited_too_long(entries: Iterable[Entry], pair_timeout: float) -> bool:
    return any(e.waited >= pair_timeout for e in entries)


def _standalone(
    path: str, refs: SidecarRefs, top: Mapping[str, Entry], library: set[str], pair_timeout: float, result: _Plan
) -> None:
    name = _stem_and_role(path)[0]
    contents, styles, problems = [], [], []
    for role, names, out in (("content", refs.content, contents), ("style", refs.style, styles)):
        if not names:
            problems.append(f"{path} names no {role}: add `{role}: FILE` (a file in the inbox or the style library)")
        for ref in names or ():
            resolved = _resolve(ref, top, library, allow_library=True)
            if resolved is None:
                problems.append(f"{role} {ref!r} is not a file name in the inbox or the style library")
            else:
                out.append(resolved)
    inbox_files = dict.fromkeys(c for c in (*contents, *styles) if not c.startswith(LIBRARY_PREFIX))
    problems += [
        f"{f} is already used by {result.named[f]}: a file belongs to one job; name several contents or "
        f"styles in one sidecar, or drop a copy under another name"
        for f in inbox_files
        if result.named.get(f, path) != path
    ]
    free = [f for f in inbox_files if result.named.get(f, path) == path]
    result.named.update(dict.fromkeys((path, *free), path))
    missing = [f for f in free if f not in top]
    files = tuple(dict.fromkeys((path, *(f for f in free if f in top))))
    if not problems and missing:
        if not _waited_too_long([top[path]], pair_timeout):
            return  # the files it names may still be on their way
        problems.append(f"{', '.join(missing)} never arrived in the inbox (waited {pair_timeout:g} s)")
    if not all(top[f].complete for f in files):
        return
    result.add(
        Submission(name, "sidecar", files, tuple(contents), tuple(styles), path, "; ".join(problems) or None)
    )


def _resolve(ref: str, top: Mapping[str, Entry], library: set[str], allow_library: bool) -> str | None:
    """A sidecar's file name, as an inbox path or a library reference; None if it is not one.

    Only bare file names are accepted, so no sidecar can point outside the inbox or the library.
    """
    if not ref or "/" in ref or "\\" in ref or ref in (".", "..") or unsafe_name(ref) or is_ignored(ref):
        return None
    if ref in top or (ref not in library and PurePosixPath(ref).suffix.lower() in IMAGE_SUFFIXES):
        return ref  # in the inbox, or expected there
    if allow_library and ref in library:
        return LIBRARY_PREFIX + ref
    return None


def _pairs(top: Mapping[str, Entry], sidecars: Mapping[str, SidecarRefs], pair_timeout: float, result: _Plan) -> None:
    """Pairs among ``top``, the top-level files no standalone sidecar names."""
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in top:
        stem, role, suffix = _stem_and_role(path)
        if role and suffix in IMAGE_SUFFIXES:
            groups[stem][role].append(path)
        elif role is None and suffix in SIDECAR_SUFFIXES and not (sidecars.get(path) or SidecarRefs()).standalone:
            groups[stem]["sidecar"].append(path)
    taken = {_stem_and_role(f)[:2]: (f, sidecar) for f, sidecar in result.named.items()}
    for stem, roles in sorted(groups.items()):
        if not (roles["content"] or roles["style"]):
            continue  # a sidecar alone that names nothing: reported as a leftover
        files = tuple(sorted(f for group in roles.values() for f in group))
        entries = [top[f] for f in files]
        problem = None
        for role in ("content", "style"):
            if len(roles[role]) > 1:
                problem = f"{stem} has {len(roles[role])} {role} images ({', '.join(roles[role])}): keep one"
        if not problem and not (roles["content"] and roles["style"]):
            have, want = ("content", "style") if roles["content"] else ("style", "content")
            if (stem, want) in taken:
                partner, sidecar = taken[(stem, want)]
                problem = f"{roles[have][0]} has no partner: {partner} is used by {sidecar}"
            elif not _waited_too_long(entries, pair_timeout):
                result.wait(files)
                continue
            else:
                problem = (
                    f"{roles[have][0]} waited {pair_timeout:g} s for its partner {stem}.{want}.EXT, which never arrived"
                )
        if not all(e.complete for e in entries):
            result.wait(files)
            continue
        sidecar = roles["sidecar"][0] if roles["sidecar"] else None
        result.add(
            Submission(stem, "pair", files, tuple(roles["content"]), tuple(roles["style"]), sidecar, problem)
        )


def _folder(name: str, files: Mapping[str, Entry], pair_timeout: float, result: _Plan) -> None:
    """A job folder. ``files`` maps paths inside it to entries: ``raw/`` is a subfolder, and ``""``
    the folder itself, reported while it is empty."""
    images = sorted(f for f in files if "/" not in f and PurePosixPath(f).suffix.lower() in IMAGE_SUFFIXES)
    styles = [f for f in images if PurePosixPath(f).stem.lower().startswith("style")]
    contents = [f for f in images if f not in styles]
    subfolders = sorted(f for f in files if f.endswith("/"))
    owned = tuple(f"{name}/{f}" for f in sorted(files))
    problem = None
    unsafe = [f"{name}/"] if unsafe_name(name) else [f"{name}/{f}" for f in files if unsafe_name(f)]
    if unsafe:
        problem = (
            f"{', '.join(map(repr, unsafe))}: a control character, a line break or bytes that are not UTF-8 in "
            f"the name; rename it"
        )
    elif not files.keys() - {""}:
        if not _waited_too_long(files.values(), pair_timeout):
            return
        problem = f"folder {name}/ is still empty after {pair_timeout:g} s: a job folder holds style.EXT and content images"
    elif subfolders:
        problem = (
            f"folder {name}/ has the subfolder(s) {', '.join(f'{name}/{s}' for s in subfolders)}: a job folder holds "
            f"its images directly; move them up into {name}/, or drop each subfolder as a job folder of its own"
        )
    elif not styles or not contents:
        if not _waited_too_long(files.values(), pair_timeout):
            return
        missing = "a style image (style.jpg, or style1.jpg, style2.jpg ... to blend)" if not styles else "a content image"
        problem = f"folder {name}/ has no {missing} after {pair_timeout:g} s"
    if not all(e.complete for e in files.values()):
        return  # refused or not, a folder is claimed whole
    sidecar = f"{name}/{FOLDER_SIDECAR}" if FOLDER_SIDECAR in files else None
    result.add(
        Submission(
            safe_name(name), "folder", owned, tuple(f"{name}/{c}" for c in contents),
            tuple(f"{name}/{s}" for s in styles), sidecar, problem,
        )
    )


def _leftover(entry: Entry, unreadable: str | None, pair_timeout: float, result: _Plan) -> None:
    """A top-level file that belongs to no submission: explain it once it has waited long enough.

    ``unreadable`` is why a sidecar could not be read: likely why it named nothing, so the reason.
    """
    if not entry.complete:
        return
    suffix = PurePosixPath(entry.path).suffix.lower()
    if unsafe_name(entry.path):
        reason = f"{entry.path!r}: a control character, a line break or bytes that are not UTF-8 in the name; rename it"
        result.add(Submission(safe_name(_stem_and_role(entry.path)[0]), "refused", (entry.path,), problem=reason))
        return
    if suffix in IMAGE_SUFFIXES or suffix in SIDECAR_SUFFIXES:
        if not _waited_too_long([entry], pair_timeout):
            return
        reason = unreadable or (
            f"{entry.path} belongs to no job after {pair_timeout:g} s: name images NAME.content.EXT and "
            f"NAME.style.EXT, put them in a folder with style.EXT, or name them in a sidecar's content:/style:"
        )
    else:  # waiting would not make it readable
        reason = (
            f"{entry.path} is not a file nst-batch reads: images must be {', '.join(IMAGE_SUFFIXES)}; "
            f"sidecars .yaml"
        )
    result.add(Submission(_stem_and_role(entry.path)[0], "refused", (entry.path,), problem=reason))
